"""Site categories named by the provincial directives, with their tracing defaults.

``default_stay_s`` closes a stay that has no exit scan; ``threshold_s`` is the
least overlap that makes two people contacts (F1) at such a site.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Category(StrEnum):
    """Where people check in."""

    OFFICE = "office"
    FACTORY = "factory"  # factory or industrial zone
    LODGING = "lodging"  # hotel, guest house
    RESTAURANT = "restaurant"
    NIGHTLIFE = "nightlife"  # bar, karaoke, massage
    GYM = "gym"
    MEETING = "meeting"  # meeting, conference
    HEALTHCARE = "healthcare"  # hospital, clinic
    APARTMENT = "apartment"
    SCHOOL = "school"
    STATION = "station"
    VEHICLE = "vehicle"  # bus or other vehicle: stays are bounded by trips
    MARKET = "market"  # mall, market
    CEREMONY = "ceremony"  # wedding, funeral
    TOURISM = "tourism"
    RELIGIOUS = "religious"


@dataclass(frozen=True, slots=True)
class CategoryDefaults:
    """Tracing defaults of a category; a site may override both."""

    label_vi: str
    default_stay_s: int
    threshold_s: int


MINUTE = 60
HOUR = 3600

DEFAULTS: dict[Category, CategoryDefaults] = {
    Category.OFFICE: CategoryDefaults("Văn phòng", 8 * HOUR, 15 * MINUTE),
    Category.FACTORY: CategoryDefaults("Nhà máy, khu công nghiệp", 8 * HOUR, 15 * MINUTE),
    Category.LODGING: CategoryDefaults("Khách sạn, nhà nghỉ", 12 * HOUR, 15 * MINUTE),
    Category.RESTAURANT: CategoryDefaults("Nhà hàng, quán ăn", 1 * HOUR, 15 * MINUTE),
    Category.NIGHTLIFE: CategoryDefaults("Quán bar, karaoke, massage", 2 * HOUR, 10 * MINUTE),
    Category.GYM: CategoryDefaults("Phòng tập thể dục", 90 * MINUTE, 15 * MINUTE),
    Category.MEETING: CategoryDefaults("Hội họp, hội nghị", 3 * HOUR, 15 * MINUTE),
    Category.HEALTHCARE: CategoryDefaults("Bệnh viện, phòng khám", 2 * HOUR, 15 * MINUTE),
    Category.APARTMENT: CategoryDefaults("Chung cư", 12 * HOUR, 15 * MINUTE),
    Category.SCHOOL: CategoryDefaults("Trường học", 6 * HOUR, 15 * MINUTE),
    Category.STATION: CategoryDefaults("Bến xe, nhà ga", 1 * HOUR, 15 * MINUTE),
    Category.VEHICLE: CategoryDefaults("Xe buýt, phương tiện", 1 * HOUR, 15 * MINUTE),
    Category.MARKET: CategoryDefaults("Chợ, trung tâm thương mại", 1 * HOUR, 15 * MINUTE),
    Category.CEREMONY: CategoryDefaults("Đám cưới, đám tang", 3 * HOUR, 15 * MINUTE),
    Category.TOURISM: CategoryDefaults("Điểm du lịch", 2 * HOUR, 15 * MINUTE),
    Category.RELIGIOUS: CategoryDefaults("Cơ sở tôn giáo", 90 * MINUTE, 15 * MINUTE),
}
