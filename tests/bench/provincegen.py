"""A synthetic province for the tracing benchmark: sites, people and check-ins.

Everything is drawn with numpy from one seed, so the same arguments always give
the same province, and 10 million check-ins take well under a minute.

Structure (at the default scale: 2,000 sites, 500,000 people, 10M check-ins, 30 days):

* Sites of the directives' categories, mostly restaurants, offices, factories,
  markets and buses, each with a log-normal popularity. Big factories and
  offices, every clinic and some markets and schools are split into zones (a
  few hundred sites at full scale); a zoned site has one gate per zone, others
  one gate (both directions) or two (an entrance and an exit).
* Factories have three shifts (06-14, 14-22, 22-06), offices and schools one.
  Buses run hourly 50-minute trips from 05:00 local, listed in ``trips``.
* About 60 % of the check-ins come from commuters: workers, clerks and pupils
  who go to "their" site (and zone, and shift) on working days with 90 %
  attendance. The rest are visits of everyone (commuters less often) to
  markets, restaurants, buses, clinics...: 70 % to one of the person's eight
  favourite places, 30 % anywhere by popularity, at category-typical hours
  and for category-typical durations (a bus ride stays inside its trip).
* A visit makes an entry scan and an exit scan; exits are often forgotten
  (7 % for commuters, up to 45 % on buses), 3 % of visits have only an exit,
  and 1.5 % have a rejected scan ('passback', 'denied', ...) just before the
  entry. Scans reach the gateway after a second or so, or hours later from a
  device that was offline.
* Subjects are 32-hex pseudonyms: 128 random bits per person.

Run it alone to time the generator: ``python tests/bench/provincegen.py [--checkins N] ...``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
from numpy.typing import NDArray

from gateway.categories import DEFAULTS, HOUR, MINUTE, Category

I8 = NDArray[np.int8]
I32 = NDArray[np.int32]
I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

VERSION = 1  # bump when the same arguments would give a different province
DAY = 24 * HOUR
TZ_OFFSET = timezone(timedelta(hours=7))  # Asia/Ho_Chi_Minh: UTC+7, no DST
START = datetime(2021, 8, 1, tzinfo=TZ_OFFSET)  # a Sunday, local midnight
T0 = int(START.timestamp())

CATEGORIES: tuple[Category, ...] = tuple(Category)
CAT_INDEX: dict[Category, int] = {c: i for i, c in enumerate(CATEGORIES)}

# Share of the sites per category.
SITE_SHARE: dict[Category, float] = {
    Category.RESTAURANT: 0.25,
    Category.OFFICE: 0.12,
    Category.FACTORY: 0.10,
    Category.VEHICLE: 0.10,
    Category.MARKET: 0.08,
    Category.NIGHTLIFE: 0.05,
    Category.SCHOOL: 0.04,
    Category.HEALTHCARE: 0.04,
    Category.GYM: 0.04,
    Category.LODGING: 0.04,
    Category.APARTMENT: 0.03,
    Category.RELIGIOUS: 0.03,
    Category.MEETING: 0.03,
    Category.TOURISM: 0.02,
    Category.CEREMONY: 0.02,
    Category.STATION: 0.01,
}

# Share of the non-commute visits per category.
VISIT_SHARE: dict[Category, float] = {
    Category.RESTAURANT: 0.30,
    Category.MARKET: 0.20,
    Category.VEHICLE: 0.15,
    Category.NIGHTLIFE: 0.06,
    Category.HEALTHCARE: 0.05,
    Category.GYM: 0.05,
    Category.RELIGIOUS: 0.04,
    Category.APARTMENT: 0.03,
    Category.TOURISM: 0.03,
    Category.CEREMONY: 0.03,
    Category.LODGING: 0.02,
    Category.MEETING: 0.02,
    Category.STATION: 0.02,
}

# Local arrival hour of a visit: mixture of (mean hour, sd hours, weight).
VISIT_HOURS: dict[Category, tuple[tuple[float, float, float], ...]] = {
    Category.RESTAURANT: ((7.0, 0.7, 0.2), (12.0, 0.6, 0.45), (19.0, 0.8, 0.35)),
    Category.MARKET: ((7.0, 1.5, 0.5), (17.0, 1.5, 0.5)),
    Category.NIGHTLIFE: ((21.0, 1.5, 1.0),),
    Category.HEALTHCARE: ((9.0, 1.5, 0.7), (14.5, 1.5, 0.3)),
    Category.GYM: ((6.0, 0.8, 0.4), (18.5, 1.0, 0.6)),
    Category.RELIGIOUS: ((6.0, 1.0, 0.3), (18.0, 1.5, 0.7)),
    Category.APARTMENT: ((19.0, 2.0, 1.0),),
    Category.TOURISM: ((10.0, 2.0, 1.0),),
    Category.CEREMONY: ((11.0, 1.0, 0.5), (18.0, 1.0, 0.5)),
    Category.LODGING: ((20.0, 2.0, 1.0),),
    Category.MEETING: ((9.0, 1.0, 0.6), (14.0, 1.0, 0.4)),
    Category.STATION: ((8.0, 3.0, 1.0),),
}

# Visit duration: (median minutes, log-normal sigma).
VISIT_MINUTES: dict[Category, tuple[float, float]] = {
    Category.RESTAURANT: (45, 0.4),
    Category.MARKET: (40, 0.5),
    Category.VEHICLE: (15, 0.5),
    Category.NIGHTLIFE: (120, 0.4),
    Category.HEALTHCARE: (90, 0.6),
    Category.GYM: (70, 0.3),
    Category.RELIGIOUS: (60, 0.4),
    Category.APARTMENT: (120, 0.6),
    Category.TOURISM: (120, 0.5),
    Category.CEREMONY: (150, 0.3),
    Category.LODGING: (600, 0.3),
    Category.MEETING: (150, 0.4),
    Category.STATION: (30, 0.5),
}

# Probability that a visit has an exit scan.
EXIT_PROB: dict[Category, float] = {
    Category.VEHICLE: 0.55,
    Category.MARKET: 0.60,
    Category.RESTAURANT: 0.70,
}
EXIT_PROB_OTHER = 0.80
EXIT_PROB_COMMUTE = 0.93
ENTRY_PROB = 0.97
REJECTED_PROB = 0.015
REASONS: tuple[str, ...] = ("ok", "passback", "denied", "health_pass_required")
REASON_P = (0.6, 0.25, 0.15)
ATTENDANCE = 0.9
FAVOURITES = 8
FAVOURITE_P = 0.7

# Commuters: (category, share of the commuters, shifts as (name, start, end) local).
COMMUTES: tuple[tuple[Category, float, tuple[tuple[str, str, str], ...]], ...] = (
    (Category.FACTORY, 0.65, (("ca1", "06:00", "14:00"), ("ca2", "14:00", "22:00"),
                              ("ca3", "22:00", "06:00"))),
    (Category.OFFICE, 0.25, (("hanh-chinh", "08:00", "17:00"),)),
    (Category.SCHOOL, 0.10, (("sang", "07:00", "11:30"),)),
)  # fmt: skip
SHIFT_P: dict[Category, tuple[float, ...]] = {
    Category.FACTORY: (0.5, 0.3, 0.2),
    Category.OFFICE: (1.0,),
    Category.SCHOOL: (1.0,),
}
WORKDAYS: dict[Category, int] = {Category.FACTORY: 6, Category.OFFICE: 5, Category.SCHOOL: 5}
COMMUTE_ROW_SHARE = 0.6
ROWS_PER_VISIT = ENTRY_PROB + 0.75 + REJECTED_PROB  # rough, for sizing only

TRIPS_PER_DAY = 16
TRIP_S = 50 * MINUTE
FIRST_TRIP_S = 5 * HOUR

DISTRICTS = (
    "Thủ Dầu Một",
    "Dĩ An",
    "Thuận An",
    "Tân Uyên",
    "Bến Cát",
    "Bàu Bàng",
    "Bắc Tân Uyên",
    "Dầu Tiếng",
    "Phú Giáo",
)
FAMILY = ("N", "T", "L", "P", "H", "V", "Đ", "B", "D", "Ngô")
MIDDLE = ("V", "T", "H", "M", "Đ", "N", "Q")
GIVEN = ("An", "Bình", "Chi", "Dũng", "Hà", "Hải", "Hương", "Lan", "Linh", "Minh", "Nam")
GIVEN2 = ("Ngọc", "Phong", "Quân", "Thảo", "Trang", "Tuấn", "Vy", "Yến", "Khoa", "Long")


@dataclass(frozen=True, slots=True)
class Params:
    """What to generate."""

    checkins: int = 10_000_000
    days: int = 30
    sites: int = 2_000
    people: int = 500_000
    seed: int = 1

    @property
    def t_end(self) -> int:
        """End of the generated period (exclusive), epoch seconds."""
        return T0 + self.days * DAY


@dataclass(slots=True)
class Sites:
    """Sites by index; devices of site ``i`` are ``dev_start[i] .. dev_start[i] + n_dev[i]``."""

    ids: list[str]
    names: list[str]
    districts: list[str]
    cat: I8
    popularity: F64
    default_stay_s: I64
    threshold_s: list[int | None]
    n_zones: I32  # 0: one room
    n_gates: I32  # gates of an unzoned site: 1 (both ways) or 2 (in, out)
    dev_start: I32 = field(default_factory=lambda: np.zeros(0, np.int32))

    def category(self, i: int) -> Category:
        """Category of site ``i``."""
        return CATEGORIES[int(self.cat[i])]


@dataclass(slots=True)
class Devices:
    """Gates by index."""

    ids: list[str]
    site: I32
    gate: list[str]
    direction: list[str]
    zone: list[str]
    stream: list[str]


@dataclass(slots=True)
class Checkins:
    """Check-in columns, sorted by scan time; ``seq`` counts per device from 1."""

    person: I32
    device: I32
    scanned_ms: I64
    received_ms: I64
    out: Bool  # direction 'out'
    reason: I8  # index in REASONS; 0: accepted
    seq: I64

    def __len__(self) -> int:
        return len(self.person)


@dataclass(slots=True)
class Province:
    """A generated province."""

    params: Params
    sites: Sites
    devices: Devices
    subjects: list[str]  # per person
    initials: list[str]  # per person
    shifts: list[tuple[str, str, str, str]]  # (site_id, name, starts, ends)
    trips: list[tuple[str, int, int]]  # (site_id, start_s, end_s)
    checkins: Checkins
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class _Visits:
    person: I32
    site: I32
    zone: I32  # -1: none
    start: I64
    end: I64
    exit_p: F64

    @staticmethod
    def concat(parts: list[_Visits]) -> _Visits:
        return _Visits(
            np.concatenate([p.person for p in parts]),
            np.concatenate([p.site for p in parts]),
            np.concatenate([p.zone for p in parts]),
            np.concatenate([p.start for p in parts]),
            np.concatenate([p.end for p in parts]),
            np.concatenate([p.exit_p for p in parts]),
        )


def _hhmm(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * HOUR + int(minutes) * MINUTE


def _counts(total: int, shares: dict[Category, float]) -> dict[Category, int]:
    """Largest-remainder split of ``total`` by ``shares``."""
    raw = {c: total * s for c, s in shares.items()}
    counts = {c: int(v) for c, v in raw.items()}
    rest = total - sum(counts.values())
    for c in sorted(raw, key=lambda c: raw[c] - counts[c], reverse=True)[:rest]:
        counts[c] += 1
    return counts


def _sites(p: Params, rng: np.random.Generator) -> Sites:
    counts = _counts(p.sites, SITE_SHARE)
    cat = np.concatenate([np.full(n, CAT_INDEX[c], np.int8) for c, n in counts.items()])
    rng.shuffle(cat)
    n = len(cat)
    ids = [f"site-{i:05d}" for i in range(n)]
    numbers: dict[int, int] = {}
    names: list[str] = []
    for c in cat.tolist():
        numbers[c] = numbers.get(c, 0) + 1
        names.append(f"{DEFAULTS[CATEGORIES[c]].label_vi} số {numbers[c]}")
    districts = [DISTRICTS[i] for i in rng.integers(0, len(DISTRICTS), n).tolist()]
    popularity = rng.lognormal(0.0, 1.0, n)
    default_stay = np.array([DEFAULTS[CATEGORIES[c]].default_stay_s for c in cat], np.int64)
    # A few sites set their own, stricter contact threshold (10 minutes).
    own = rng.random(n) < 0.03
    threshold: list[int | None] = [10 * MINUTE if o else None for o in own.tolist()]
    n_gates = np.where(rng.random(n) < 0.5, 2, 1).astype(np.int32)
    return Sites(
        ids, names, districts, cat, popularity, default_stay, threshold, np.zeros(n, np.int32),
        n_gates,
    )  # fmt: skip


def _cat_sites(sites: Sites, c: Category) -> I32:
    return np.flatnonzero(sites.cat == CAT_INDEX[c]).astype(np.int32)


def _commute_visits(
    p: Params, sites: Sites, rng: np.random.Generator
) -> tuple[_Visits, I32, list[tuple[str, str, str, str]]]:
    """Daily visits of commuters to their own site, zone and shift; also the zones and shifts."""
    per_commuter = p.days * (5.5 / 7) * ATTENDANCE * ROWS_PER_VISIT
    total = min(int(p.checkins * COMMUTE_ROW_SHARE / per_commuter), p.people // 2)
    commuters = rng.permutation(p.people)[:total].astype(np.int32)
    parts: list[_Visits] = []
    shifts: list[tuple[str, str, str, str]] = []
    dow = (np.arange(p.days) + START.weekday()) % 7  # 0: Monday
    offset = 0
    for c, share, shift_defs in COMMUTES:
        own = _cat_sites(sites, c)
        count = round(total * share) if c is not COMMUTES[-1][0] else total - offset
        people = commuters[offset : offset + count]
        offset += count
        if len(own) == 0 or len(people) == 0:
            continue
        weights = sites.popularity[own] / sites.popularity[own].sum()
        site = own[rng.choice(len(own), len(people), p=weights)]
        # Zones: big workplaces split into workshops of about 200 people.
        size = np.bincount(site, minlength=len(sites.ids))[own]
        zoned = np.where(size >= 400, np.minimum(size // 200, 24), 0)
        if c is Category.SCHOOL:
            zoned = np.where(rng.random(len(own)) < 0.5, np.clip(size // 150, 2, 12), 0)
        sites.n_zones[own] = zoned
        nz = sites.n_zones[site]
        zone = np.where(nz > 0, (rng.random(len(people)) * np.maximum(nz, 1)).astype(np.int32), -1)
        for s in own.tolist():
            shifts.extend((sites.ids[s], name, a, b) for name, a, b in shift_defs)
        shift = rng.choice(len(shift_defs), len(people), p=SHIFT_P[c])
        starts = np.array([_hhmm(a) for _, a, _ in shift_defs], np.int64)[shift]
        ends = np.array([_hhmm(b) for _, _, b in shift_defs], np.int64)[shift]
        ends = np.where(ends <= starts, ends + DAY, ends)
        works = (rng.random((len(people), p.days)) < ATTENDANCE) & (dow < WORKDAYS[c])[None, :]
        who, day = np.nonzero(works)
        early = rng.uniform(5 * MINUTE, 30 * MINUTE, len(who))
        late = rng.uniform(0, 25 * MINUTE, len(who))
        start = T0 + day * DAY + starts[who] - early.astype(np.int64)
        end = T0 + day * DAY + ends[who] + late.astype(np.int64)
        parts.append(
            _Visits(
                people[who],
                site[who],
                zone[who].astype(np.int32),
                start.astype(np.int64),
                end.astype(np.int64),
                np.full(len(who), EXIT_PROB_COMMUTE),
            )
        )
    # Every clinic is split into departments, some markets into halls.
    for c, prob, lo, hi in ((Category.HEALTHCARE, 1.0, 3, 7), (Category.MARKET, 0.4, 2, 5)):
        own = _cat_sites(sites, c)
        pick = rng.random(len(own)) < prob
        sites.n_zones[own[pick]] = rng.integers(lo, hi, int(pick.sum()))
    visits = _Visits.concat(parts) if parts else _empty_visits()
    return visits, commuters, shifts


def _empty_visits() -> _Visits:
    return _Visits(
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0, np.int32),
        np.zeros(0, np.int64),
        np.zeros(0, np.int64),
        np.zeros(0, np.float64),
    )


@dataclass(slots=True)
class _VisitModel:
    site_p: F64  # per site: probability of a random visit
    favourites: I32  # (people, FAVOURITES)
    person_p: F64  # per person: share of the visits
    trip_offset: I64  # per site: minutes after FIRST_TRIP_S of a bus's first trip


def _visit_model(p: Params, sites: Sites, commuters: I32, rng: np.random.Generator) -> _VisitModel:
    site_p = np.zeros(len(sites.ids))
    for c, share in VISIT_SHARE.items():
        own = _cat_sites(sites, c)
        if len(own):
            site_p[own] = share * sites.popularity[own] / sites.popularity[own].sum()
    site_p /= site_p.sum()
    favourites = rng.choice(len(site_p), (p.people, FAVOURITES), p=site_p).astype(np.int32)
    activity = rng.gamma(1.2, 1.0, p.people)
    activity[commuters] *= 0.6
    trip_offset = rng.integers(0, 60, len(sites.ids)).astype(np.int64) * MINUTE
    return _VisitModel(site_p, favourites, activity / activity.sum(), trip_offset)


def _random_visits(
    p: Params, sites: Sites, m: _VisitModel, n: int, rng: np.random.Generator
) -> _Visits:
    person = rng.choice(p.people, n, p=m.person_p).astype(np.int32)
    favourite = rng.random(n) < FAVOURITE_P
    site = np.where(
        favourite,
        m.favourites[person, rng.integers(0, FAVOURITES, n)],
        rng.choice(len(m.site_p), n, p=m.site_p),
    ).astype(np.int32)
    nz = sites.n_zones[site]
    zone = np.where(nz > 0, (rng.random(n) * np.maximum(nz, 1)).astype(np.int32), -1)
    day_start = T0 + rng.integers(0, p.days, n).astype(np.int64) * DAY
    start = np.zeros(n, np.int64)
    end = np.zeros(n, np.int64)
    exit_p = np.full(n, EXIT_PROB_OTHER)
    cat = sites.cat[site]
    for c in VISIT_SHARE:
        mask = np.flatnonzero(cat == CAT_INDEX[c])
        k = len(mask)
        if k == 0:
            continue
        median, sigma = VISIT_MINUTES[c]
        minutes = np.clip(median * np.exp(sigma * rng.standard_normal(k)), 5, 3 * median)
        exit_p[mask] = EXIT_PROB.get(c, EXIT_PROB_OTHER)
        if c is Category.VEHICLE:
            trip = rng.integers(0, TRIPS_PER_DAY, k).astype(np.int64)
            trip_start = day_start[mask] + FIRST_TRIP_S + m.trip_offset[site[mask]] + trip * HOUR
            board = trip_start + rng.integers(0, 30 * MINUTE, k)
            ride = np.minimum((minutes * MINUTE).astype(np.int64), trip_start + TRIP_S - 60 - board)
            start[mask] = board
            end[mask] = board + ride
            continue
        mix = VISIT_HOURS[c]
        which = rng.choice(
            len(mix), k, p=np.array([w for _, _, w in mix]) / sum(w for _, _, w in mix)
        )
        mean = np.array([h for h, _, _ in mix])[which]
        sd = np.array([s for _, s, _ in mix])[which]
        hour = np.clip(mean + sd * rng.standard_normal(k), 0.0, 23.9)
        start[mask] = day_start[mask] + (hour * HOUR).astype(np.int64)
        end[mask] = start[mask] + (minutes * MINUTE).astype(np.int64)
    return _Visits(person, site, zone.astype(np.int32), start, end, exit_p)


def _devices(sites: Sites, rng: np.random.Generator) -> Devices:
    ids: list[str] = []
    site_of: list[int] = []
    gates: list[str] = []
    directions: list[str] = []
    zones: list[str] = []
    dev_start = np.zeros(len(sites.ids), np.int32)
    for s, site_id in enumerate(sites.ids):
        dev_start[s] = len(ids)
        nz = int(sites.n_zones[s])
        if nz:
            for z in range(nz):
                ids.append(f"{site_id}-z{z + 1}")
                gates.append(f"cửa khu {z + 1}")
                directions.append("in")
                zones.append(f"z{z + 1}")
                site_of.append(s)
        else:
            two = int(sites.n_gates[s]) == 2
            for g, (gate, direction) in enumerate(
                (("cổng vào", "in"), ("cổng ra", "out")) if two else (("cổng chính", "in"),)
            ):
                ids.append(f"{site_id}-g{g + 1}")
                gates.append(gate)
                directions.append(direction)
                zones.append("")
                site_of.append(s)
    sites.dev_start = dev_start
    streams = rng.bytes(16 * len(ids))
    return Devices(
        ids,
        np.array(site_of, np.int32),
        gates,
        directions,
        zones,
        [streams[i * 16 : (i + 1) * 16].hex() for i in range(len(ids))],
    )


def _trips(p: Params, sites: Sites, m: _VisitModel) -> list[tuple[str, int, int]]:
    trips: list[tuple[str, int, int]] = []
    for s in _cat_sites(sites, Category.VEHICLE).tolist():
        for d in range(p.days):
            first = T0 + d * DAY + FIRST_TRIP_S + int(m.trip_offset[s])
            trips.extend(
                (sites.ids[s], first + k * HOUR, first + k * HOUR + TRIP_S)
                for k in range(TRIPS_PER_DAY)
            )
    return trips


def _scans(p: Params, sites: Sites, v: _Visits, rng: np.random.Generator) -> Checkins:
    """Entry, exit and rejected scans of the visits (unsorted, seq not yet set)."""
    n = len(v.person)
    has_exit = rng.random(n) < v.exit_p
    has_entry = (rng.random(n) < ENTRY_PROB) | ~has_exit
    rejected = has_entry & (rng.random(n) < REJECTED_PROB)
    zoned = v.zone >= 0
    first = sites.dev_start[v.site]
    entry_dev = np.where(zoned, first + v.zone, first).astype(np.int32)
    exit_dev = np.where(zoned, entry_dev, first + sites.n_gates[v.site] - 1).astype(np.int32)
    parts_person = [v.person[has_entry], v.person[has_exit], v.person[rejected]]
    parts_device = [entry_dev[has_entry], exit_dev[has_exit], entry_dev[rejected]]
    ms = rng.integers(0, 1000, n)
    back = rng.integers(5_000, 60_000, int(rejected.sum()))
    parts_ms = [
        v.start[has_entry] * 1000 + ms[has_entry],
        v.end[has_exit] * 1000 + ms[has_exit],
        v.start[rejected] * 1000 + ms[rejected] - back,
    ]
    k_in, k_out, k_rej = (len(x) for x in parts_person)
    out = np.concatenate([np.zeros(k_in, bool), np.ones(k_out, bool), np.zeros(k_rej, bool)])
    reason = np.zeros(k_in + k_out + k_rej, np.int8)
    reason[k_in + k_out :] = rng.choice([1, 2, 3], k_rej, p=REASON_P)
    scanned = np.concatenate(parts_ms)
    # Most scans arrive within seconds; 2 % come from a device that was offline for hours.
    delay = (rng.lognormal(np.log(800.0), 0.6, len(scanned))).astype(np.int64)
    offline = rng.random(len(scanned)) < 0.02
    delay[offline] += rng.integers(0, 4 * HOUR * 1000, int(offline.sum()))
    return Checkins(
        np.concatenate(parts_person),
        np.concatenate(parts_device),
        scanned,
        scanned + delay,
        out,
        reason,
        np.zeros(len(scanned), np.int64),
    )


def _join(parts: list[Checkins]) -> Checkins:
    return Checkins(
        *(np.concatenate([getattr(c, f.name) for c in parts]) for f in fields(Checkins))
    )


def _take(c: Checkins, idx: NDArray[np.intp]) -> Checkins:
    return Checkins(*(getattr(c, f.name)[idx] for f in fields(Checkins)))


def _subjects(n: int, rng: np.random.Generator) -> list[str]:
    raw = rng.bytes(16 * n)
    return [raw[i * 16 : (i + 1) * 16].hex() for i in range(n)]


def _initials(n: int, rng: np.random.Generator) -> list[str]:
    names = [
        f"{f}. {m}. {g}" for f in FAMILY for m in MIDDLE for g in (*GIVEN, *GIVEN2)
    ]  # shared string objects: a row refers to one of a few hundred
    return [names[i] for i in rng.integers(0, len(names), n).tolist()]


def generate(p: Params) -> Province:
    """The province of ``p``: exactly ``p.checkins`` check-ins, all within ``p.days`` days."""
    rng = np.random.default_rng(p.seed)
    sites = _sites(p, rng)
    commute, commuters, shifts = _commute_visits(p, sites, rng)
    devices = _devices(sites, rng)
    model = _visit_model(p, sites, commuters, rng)
    trips = _trips(p, sites, model)
    parts = [_in_period(p, _scans(p, sites, commute, rng))]
    have = len(parts[0])
    visits = len(commute.person)
    while have < p.checkins:
        more = int((p.checkins - have) / ROWS_PER_VISIT * 1.02) + 100
        batch = _in_period(p, _scans(p, sites, _random_visits(p, sites, model, more, rng), rng))
        parts.append(batch)
        have += len(batch)
        visits += more
    scans = _join(parts)
    if len(scans) > p.checkins:  # drop the surplus at random: a few more lost scans
        keep = np.sort(rng.permutation(len(scans))[: p.checkins])
        scans = _take(scans, keep)
    order = np.argsort(scans.scanned_ms, kind="stable")
    scans = _take(scans, order)
    scans.seq = _seq_per_device(scans.device, len(devices.ids))
    subjects = _subjects(p.people, rng)
    return Province(
        params=p,
        sites=sites,
        devices=devices,
        subjects=subjects,
        initials=_initials(p.people, rng),
        shifts=shifts,
        trips=trips,
        checkins=scans,
        stats={
            "visits": visits,
            "commute_visits": len(commute.person),
            "commuters": len(commuters),
            "zoned_sites": int((sites.n_zones > 0).sum()),
            "zones": int(sites.n_zones.sum()),
            "devices": len(devices.ids),
            "trips": len(trips),
            "rejected": int((scans.reason > 0).sum()),
            "exits": int(scans.out.sum()),
        },
    )


def _in_period(p: Params, c: Checkins) -> Checkins:
    keep = np.flatnonzero((c.scanned_ms >= T0 * 1000) & (c.scanned_ms < p.t_end * 1000))
    return _take(c, keep)


def _seq_per_device(device: I32, n_devices: int) -> I64:
    """1, 2, ... per device in the current (time) order."""
    order = np.argsort(device, kind="stable")
    counts = np.bincount(device, minlength=n_devices)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    seq = np.empty(len(device), np.int64)
    seq[order] = np.arange(len(device)) - np.repeat(starts, counts) + 1
    return seq


def iso_utc(ms: I64) -> list[str]:
    """Epoch milliseconds as the gateway stores them: '2021-08-01T01:02:03.456+00:00'."""
    text = np.datetime_as_string(ms.astype("datetime64[ms]"), unit="ms")
    return list(np.strings.add(text, "+00:00").tolist())


def checkin_rows(prov: Province, chunk: int = 250_000) -> Iterator[tuple[object, ...]]:
    """Rows for ``INSERT INTO checkins (device_id, stream, seq, site_id, scanned_at,
    received_at, direction, kind, accepted, reason, subject, warnings, scanned_s,
    clock_synced, initials)``, in scan order."""
    c = prov.checkins
    dev_ids = np.array(prov.devices.ids, dtype=object)
    streams = np.array(prov.devices.stream, dtype=object)
    dev_site = np.array([prov.sites.ids[s] for s in prov.devices.site.tolist()], dtype=object)
    subjects = np.array(prov.subjects, dtype=object)
    initials = np.array(prov.initials, dtype=object)
    directions = np.array(["in", "out"], dtype=object)
    reasons = np.array(REASONS, dtype=object)
    for a in range(0, len(c), chunk):
        b = min(a + chunk, len(c))
        dev = c.device[a:b]
        who = c.person[a:b]
        reason = c.reason[a:b]
        n = b - a
        yield from zip(
            dev_ids[dev].tolist(),
            streams[dev].tolist(),
            c.seq[a:b].tolist(),
            dev_site[dev].tolist(),
            iso_utc(c.scanned_ms[a:b]),
            iso_utc(c.received_ms[a:b]),
            directions[c.out[a:b].astype(np.intp)].tolist(),
            ["cccd"] * n,
            (reason == 0).astype(np.int64).tolist(),
            reasons[reason].tolist(),
            subjects[who].tolist(),
            ["[]"] * n,
            (c.scanned_ms[a:b] // 1000).tolist(),
            [1] * n,
            initials[who].tolist(),
            strict=True,
        )


def add_args(parser: argparse.ArgumentParser) -> None:
    """The generator's command-line arguments (shared with the benchmark)."""
    d = Params()
    parser.add_argument("--checkins", type=int, default=d.checkins, help="check-ins (exact)")
    parser.add_argument("--days", type=int, default=d.days, help="days of check-ins")
    parser.add_argument("--sites", type=int, default=d.sites, help="sites")
    parser.add_argument("--people", type=int, default=d.people, help="people (subjects)")
    parser.add_argument("--seed", type=int, default=d.seed, help="random seed")


def params_of(args: argparse.Namespace) -> Params:
    """Params from parsed arguments."""
    return Params(
        checkins=args.checkins, days=args.days, sites=args.sites, people=args.people, seed=args.seed
    )


def main() -> None:
    parser = argparse.ArgumentParser(description="Time the province generator.")
    add_args(parser)
    p = params_of(parser.parse_args())
    began = time.perf_counter()
    prov = generate(p)
    took = time.perf_counter() - began
    c = prov.checkins
    print(f"generated {len(c):,} check-ins in {took:.1f} s: {prov.stats}")
    print(f"people who checked in: {len(np.unique(c.person)):,} of {p.people:,}")
    began = time.perf_counter()
    first = next(checkin_rows(prov))
    rows = sum(1 for _ in checkin_rows(prov))
    print(f"formatted {rows:,} rows in {time.perf_counter() - began:.1f} s; first: {first}")
    print(f"period {datetime.fromtimestamp(T0, UTC)} .. {datetime.fromtimestamp(p.t_end, UTC)}")


if __name__ == "__main__":
    main()
