"""Device label sheets: the PDF and SVG of a real site, rasterised and read by the gate decoder."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pypdfium2 as pdfium
import pytest
from PIL import Image

from broker.launcher import free_port
from broker.settings import DecoderConfig
from device.decoder import Decoder, make_decoder, to_gray
from gateway.categories import Category
from gateway.registry import SiteEntry
from provisioning.cli import main
from provisioning.devices import revoke_device
from provisioning.labels import write_labels
from provisioning.printing import PrintError
from provisioning.site import DeviceSpec, create_site
from provisioning.siteinfo import SiteInfo, read_site

DPI = 200
SITE_NAME = "Xưởng may Phú Hòa"
DEVICES = 30
SVG = "{http://www.w3.org/2000/svg}"


def gate_of(i: int) -> str:
    return f"Cổng số {i}" if i % 7 else "Cổng phụ phía sau nhà xưởng dệt nhuộm khu B"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> SiteInfo:
    directory = tmp_path_factory.mktemp("labels") / "site"
    specs = [
        DeviceSpec(device_id=f"gate-{i:02d}", gate=gate_of(i), direction="in" if i % 2 else "out")
        for i in range(1, DEVICES + 1)
    ]
    entry = SiteEntry(site_id="phu-hoa", name=SITE_NAME, category=Category.FACTORY)
    create_site(directory, site_id="phu-hoa", port=free_port(), devices=specs, site=entry)
    return read_site(directory)


@pytest.fixture(scope="module")
def decoder() -> Decoder:
    return make_decoder(DecoderConfig())


def pdf_pages(path: Path) -> list[tuple[Image.Image, str]]:
    """Each page rasterised at DPI, with its extracted text (whitespace made single spaces)."""
    document = pdfium.PdfDocument(str(path))
    pages = []
    for page in document:
        text = " ".join(page.get_textpage().get_text_range().split())
        pages.append((page.render(scale=DPI / 72).to_pil(), text))
    document.close()
    return pages


def test_label_pdf_codes_read_back_as_device_ids(
    site: SiteInfo, decoder: Decoder, tmp_path: Path
) -> None:
    out = tmp_path / "labels.pdf"
    assert write_labels(site, out) == [out]
    pages = pdf_pages(out)
    assert len(pages) == 2  # 24 labels a page
    codes = [text for image, _ in pages for text in decoder.decode(to_gray(image))]
    assert sorted(codes) == [f"gate-{i:02d}" for i in range(1, DEVICES + 1)]
    text = " ".join(page_text for _, page_text in pages)
    assert text.count(SITE_NAME) == DEVICES
    assert text.count("Hướng: VÀO (in)") == DEVICES // 2
    assert text.count("Hướng: RA (out)") == DEVICES // 2
    for i in range(1, DEVICES + 1):
        assert f"gate-{i:02d}" in text
        assert f"Cổng: {gate_of(i)}" in text


def test_label_svg_pages_hold_every_code(site: SiteInfo, decoder: Decoder, tmp_path: Path) -> None:
    paths = write_labels(site, tmp_path / "labels.svg")
    assert [p.name for p in paths] == ["labels-1.svg", "labels-2.svg"]
    codes, texts = [], []
    for path in paths:
        root = ET.parse(path).getroot()
        assert root.get("viewBox") == "0 0 210 297"
        nested = root.findall(f"{SVG}svg")
        codes += decoder.decode(to_gray(rasterise(nested)))
        texts += [element.text or "" for element in root.iter(f"{SVG}text")]
    assert len(codes) == DEVICES
    assert sorted(codes) == [f"gate-{i:02d}" for i in range(1, DEVICES + 1)]
    assert texts.count(SITE_NAME) == DEVICES
    assert "Cổng: Cổng số 1" in texts and "Hướng: RA (out)" in texts


def rasterise(codes: list[ET.Element]) -> Image.Image:
    """Draw the nested segno codes of an A4 SVG page where the page places them, at DPI."""
    scale = DPI / 25.4
    page = Image.new("L", (round(210 * scale), round(297 * scale)), 255)
    for element in codes:
        modules = int(element.get("viewBox", "").split()[2])
        dark = np.zeros((modules, modules), dtype=bool)
        for path in element.iter(f"{SVG}path"):
            draw_segno_path(dark, path.get("d", ""))
        size = round(float(element.get("width", "0")) * scale)
        image = Image.fromarray(np.where(dark, 0, 255).astype(np.uint8), "L")
        image = image.resize((size, size), Image.Resampling.NEAREST)
        page.paste(
            image,
            (
                round(float(element.get("x", "0")) * scale),
                round(float(element.get("y", "0")) * scale),
            ),
        )
    return page


def draw_segno_path(dark: np.ndarray, d: str) -> None:
    """segno draws each row's dark runs as 1-wide horizontal strokes: M/m moves, h runs."""
    x = y = 0.0
    for command, numbers in re.findall(r"([MmHh])([-\d. ]+)", d.replace("-", " -")):
        values = [float(n) for n in numbers.split()]
        if command == "M":
            x, y = values
        elif command == "m":
            x, y = x + values[0], y + values[1]
        else:
            length = values[0] if command == "h" else values[0] - x
            dark[int(y - 0.5), int(x) : int(x + length)] = True
            x += length


def test_label_sheet_needs_pdf_or_svg(site: SiteInfo, tmp_path: Path) -> None:
    with pytest.raises(PrintError, match=r"labels\.png: the label sheet must be a \.pdf or \.svg"):
        write_labels(site, tmp_path / "labels.png")
    assert not (tmp_path / "labels.png").exists()


def test_site_without_devices_has_no_label_sheet(tmp_path: Path) -> None:
    create_site(tmp_path / "empty", site_id="empty", port=free_port(), devices=[])
    with pytest.raises(PrintError, match="site empty has no devices to label"):
        write_labels(read_site(tmp_path / "empty"), tmp_path / "labels.pdf")
    assert not (tmp_path / "labels.pdf").exists()


def test_labels_command(site: SiteInfo, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sheet.pdf"
    assert main(["labels", "--site", str(site.directory), "--out", str(out)]) == 0
    assert f"labels: {out}" in capsys.readouterr().out
    assert len(pdf_pages(out)) == 2
    assert main(["labels", "--site", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_revoked_device_gets_no_label(decoder: Decoder, tmp_path: Path) -> None:
    specs = [DeviceSpec(device_id=f"bus-{i}", gate="Cửa trước") for i in (1, 2, 3)]
    made = create_site(tmp_path / "site", site_id="xe-buyt", port=free_port(), devices=specs)
    revoke_device(made, "bus-2", register=False)
    out = tmp_path / "labels.pdf"
    write_labels(read_site(made.directory), out)
    ((image, text),) = pdf_pages(out)
    assert sorted(decoder.decode(to_gray(image))) == ["bus-1", "bus-3"]
    assert "bus-2" not in text
