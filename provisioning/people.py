"""Synthetic people and the camera frames of their QR codes, for the demo, tests and benchmarks.

Names, provinces and addresses are drawn from Vietnamese lists with a seeded
random generator, so a run can be repeated exactly. Every card is valid unless
a caller asks for a bad one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import segno
from PIL import Image

from device.cccd import PROVINCES, Sex, format_cccd, make_id_number
from device.decoder import GrayFrame

SURNAMES = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng",
            "Bùi", "Đỗ", "Hồ", "Ngô", "Dương", "Lý"]  # fmt: skip
MIDDLE = {"Nam": ["Văn", "Hữu", "Đức", "Minh", "Quang", "Thành", "Công"],
          "Nữ": ["Thị", "Ngọc", "Thu", "Thanh", "Mỹ", "Bích", "Kim"]}  # fmt: skip
GIVEN = {"Nam": ["An", "Bình", "Cường", "Dũng", "Hùng", "Khánh", "Long", "Phúc", "Quân", "Sơn",
                 "Tuấn", "Việt", "Đạt", "Hiếu", "Lộc", "Thắng"],
         "Nữ": ["Anh", "Chi", "Dung", "Giang", "Hà", "Hương", "Lan", "Linh", "Mai", "Ngọc",
                "Nhung", "Thảo", "Trang", "Uyên", "Yến", "Nữ"]}  # fmt: skip
STREETS = ["Lê Lợi", "Trần Hưng Đạo", "Nguyễn Huệ", "Hai Bà Trưng", "Lý Thường Kiệt",
           "Điện Biên Phủ", "Võ Thị Sáu", "Phạm Ngũ Lão", "Quang Trung", "Hùng Vương"]  # fmt: skip
WARDS = ["Phường Bến Nghé", "Phường Tân Định", "Xã Tân Phú Trung", "Phường Hòa Khánh Bắc",
         "Xã Đức Hòa Hạ", "Phường Quyết Thắng", "Thị trấn Củ Chi"]  # fmt: skip

# What else people hold up to a gate camera: none of it is a credential.
NOT_CREDENTIALS = [
    "https://qr.example.vn/menu?ban=12",
    "WIFI:S:Xuong-May-A;T:WPA;P:matkhau123;;",
    "00020101021138570010A000000727012700069704220113VQRQ0000000010208QRIBFTTA53037045802VN6304ABCD",
    "Phiếu giao hàng số 2024-118",
    "1234567890",
]


@dataclass(frozen=True, slots=True)
class Person:
    """A synthetic holder of a chip ID card."""

    id_number: str
    name: str
    sex: Sex
    date_of_birth: date
    address: str
    issued_on: date

    def card_text(self) -> str:
        """The QR text of this person's CCCD."""
        return format_cccd(
            id_number=self.id_number,
            name=self.name,
            date_of_birth=self.date_of_birth,
            sex=self.sex,
            address=self.address,
            issued_on=self.issued_on,
        )


def synthetic_people(count: int, *, seed: int = 1, today: date | None = None) -> list[Person]:
    """``count`` distinct people with valid, self-consistent cards."""
    rng = random.Random(seed)
    today = today or date.today()
    codes = sorted(PROVINCES)
    people = []
    for serial in range(1, count + 1):
        sex: Sex = rng.choice(["Nam", "Nữ"])
        born = date(rng.randint(1955, 2006), 1, 1) + timedelta(days=rng.randint(0, 364))
        issued = born + timedelta(days=rng.randint(14 * 365, (today - born).days))
        code = rng.choice(codes)
        name = f"{rng.choice(SURNAMES)} {rng.choice(MIDDLE[sex])} {rng.choice(GIVEN[sex])}"
        street, ward = rng.choice(STREETS), rng.choice(WARDS)
        address = f"Số {rng.randint(1, 300)}, {street}, {ward}, {PROVINCES[code]}"
        number = make_id_number(
            province_code=code,
            sex=sex,
            date_of_birth=born,
            serial=(seed * 1000 + serial) % 1_000_000,
        )
        people.append(Person(number, name, sex, born, address, min(issued, today)))
    return people


def gate_frame(
    text: str | None, rng: random.Random, *, size: tuple[int, int] = (640, 480)
) -> Image.Image:
    """A grayscale camera-like frame: a textured background, the code somewhere in it."""
    width, height = size
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 12, (height, width))
    gradient = np.linspace(70, 150, width)[None, :]
    frame = Image.fromarray(np.clip(gradient + noise, 0, 255).astype(np.uint8), "L")
    if text is None:
        return frame
    code = segno.make(text, error="m", micro=False)
    scale = int(max(2, min(6, (min(width, height) - 80) // code.symbol_size(scale=1)[0])))
    qr = Image.fromarray(qr_modules(code, scale=scale), "L")
    x = rng.randrange(0, max(1, width - qr.width))
    y = rng.randrange(0, max(1, height - qr.height))
    frame.paste(qr, (x, y))
    return frame


def qr_modules(code: segno.QRCode, *, scale: int, border: int = 4) -> GrayFrame:
    """The code as a gray image array: dark modules 0, light 255, with a quiet zone."""
    dark = np.array(code.matrix, dtype=bool)
    dark = np.pad(dark, border, constant_values=False)
    return np.where(np.kron(dark, np.ones((scale, scale), dtype=bool)), 0, 255).astype(np.uint8)


def write_frames(directory: Path, texts: list[str | None], *, seed: int = 1) -> list[Path]:
    """Write one PNG frame per text (None: a frame with no code), named in order."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    paths = []
    for i, text in enumerate(texts):
        path = directory / f"frame-{i:05d}.png"
        gate_frame(text, rng).save(path)
        paths.append(path)
    return paths
