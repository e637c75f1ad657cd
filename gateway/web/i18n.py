"""The dashboard's words in Vietnamese (the default) and English.

The language comes from ``?lang=vi|en`` (remembered in a cookie) or the
cookie alone. A key missing from the catalogue shows as the key itself, and a
test holds every key used by the templates present in both languages.
"""

from __future__ import annotations

from typing import Literal

Lang = Literal["vi", "en"]
LANGS: tuple[Lang, ...] = ("vi", "en")
DEFAULT: Lang = "vi"
COOKIE = "qrgate_lang"

MESSAGES: dict[str, tuple[str, str]] = {
    # key: (Vietnamese, English)
    "app": ("Cổng QR", "QR gates"),
    "nav.devices": ("Thiết bị", "Devices"),
    "nav.live": ("Trực tiếp", "Live"),
    "nav.trace": ("Truy vết", "Tracing"),
    "nav.rollout": ("Báo cáo triển khai", "Rollout report"),
    "nav.users": ("Người dùng", "Users"),
    "nav.logout": ("Đăng xuất", "Log out"),
    "login.title": ("Đăng nhập", "Log in"),
    "login.username": ("Tên đăng nhập", "User name"),
    "login.password": ("Mật khẩu", "Password"),
    "login.submit": ("Đăng nhập", "Log in"),
    "login.failed": ("Sai tên đăng nhập hoặc mật khẩu", "Wrong user name or password"),
    "login.throttled": (
        "Đăng nhập sai quá nhiều lần với tên này hoặc từ địa chỉ này. Thử lại sau",
        "Too many failed logins for this user name or from this address. Try again in",
    ),
    "unit.min": ("phút", "min"),
    "role.operator": ("Vận hành", "Operator"),
    "role.health": ("Cán bộ y tế", "Health officer"),
    "role.admin": ("Quản trị", "Administrator"),
    "filter.site": ("Địa điểm", "Site"),
    "filter.all": ("Tất cả", "All"),
    "filter.apply": ("Lọc", "Filter"),
    "dev.device": ("Thiết bị", "Device"),
    "dev.site": ("Địa điểm", "Site"),
    "dev.gate": ("Cổng", "Gate"),
    "dev.direction": ("Chiều", "Direction"),
    "dev.zone": ("Khu vực / xe", "Zone / vehicle"),
    "dev.firmware": ("Phần mềm", "Firmware"),
    "dev.last_seen": ("Lần cuối", "Last seen"),
    "dev.status": ("Trạng thái", "Status"),
    "dev.outbox": ("Hàng chờ", "Outbox"),
    "dev.oldest": ("Chờ lâu nhất", "Oldest pending"),
    "dev.clock": ("Đồng hồ", "Clock"),
    "dev.config": ("Cấu hình (đã áp dụng / yêu cầu)", "Config (applied / desired)"),
    "dev.none": ("Không có thiết bị", "No devices"),
    "dev.config_error": ("Lỗi cấu hình", "Config error"),
    "dev.recent": ("Lượt quét gần đây", "Recent check-ins"),
    "dev.edit": ("Sửa và gửi cấu hình", "Edit and push the config"),
    "dev.push": ("Gửi cấu hình", "Push config"),
    "dev.pushed": ("Đã gửi phiên bản", "Pushed version"),
    "dev.alerts": ("Cảnh báo", "Alerts"),
    "status.online": ("Trực tuyến", "Online"),
    "status.offline": ("Mất kết nối", "Offline"),
    "status.unknown": ("Chưa rõ", "Unknown"),
    "clock.synced": ("Đã đồng bộ", "Synced"),
    "clock.unsynced": ("Chưa đồng bộ", "Not synced"),
    "dir.in": ("Vào", "In"),
    "dir.out": ("Ra", "Out"),
    "ci.time": ("Thời gian", "Time"),
    "ci.kind": ("Loại", "Kind"),
    "ci.result": ("Kết quả", "Result"),
    "ci.reason": ("Lý do", "Reason"),
    "ci.accepted": ("Chấp nhận", "Accepted"),
    "ci.rejected": ("Từ chối", "Rejected"),
    "ci.subject": ("Mã ẩn danh", "Pseudonym"),
    "ci.initials": ("Viết tắt", "Initials"),
    "live.title": ("Lượt quét mỗi giờ theo địa điểm", "Check-ins per hour per site"),
    "live.updated": ("Cập nhật lúc", "Updated at"),
    "trace.title": ("Truy vết F1/F2", "F1/F2 tracing"),
    "trace.subject": ("Mã ẩn danh của F0", "Pseudonym of the case (F0)"),
    "trace.or_id": ("hoặc số CCCD của F0", "or the case's ID number"),
    "trace.or_site": ("hoặc địa điểm", "or a site"),
    "trace.since": ("Từ", "From"),
    "trace.until": ("Đến", "Until"),
    "trace.threshold": ("Ngưỡng tiếp xúc (phút)", "Contact threshold (min)"),
    "trace.purpose": ("Mục đích (ghi vào nhật ký)", "Purpose (written to the audit log)"),
    "trace.key": ("Khóa của cơ quan y tế (để xem tên)", "Health authority key (to see names)"),
    "trace.run": ("Truy vết", "Trace"),
    "trace.export": ("Xuất file", "Export"),
    "trace.f1": ("F1", "F1"),
    "trace.f2": ("F2", "F2"),
    "trace.people": ("Người có mặt", "People present"),
    "trace.name": ("Tên", "Name"),
    "trace.id": ("Số CCCD", "ID number"),
    "trace.place": ("Nơi", "Place"),
    "trace.overlap": ("Tiếp xúc (phút)", "Overlap (min)"),
    "trace.none": ("Không có ai", "Nobody"),
    "trace.audited": (
        "Mọi truy vết và xuất file đều được ghi nhật ký.",
        "Every trace and export is recorded in the audit log.",
    ),
    "rollout.title": ("Báo cáo triển khai", "Rollout report"),
    "rollout.download": ("Tải về", "Download"),
    "rollout.summary": ("tổng hợp theo khu vực", "summary per area"),
    "rollout.daily": ("theo địa điểm và ngày", "per site and day"),
    "site.defaults": ("Cấu hình mặc định của địa điểm", "Site defaults"),
    "site.defaults_help": (
        "Áp dụng cho mọi thiết bị của địa điểm; cấu hình riêng của thiết bị được ưu tiên.",
        "Applies to every device of the site; a device's own override wins.",
    ),
    "site.push": ("Lưu và gửi cho mọi thiết bị", "Save and push to every device"),
    "site.pushed": ("Đã lưu bản sửa đổi", "Saved revision"),
    "site.revision": ("Bản sửa đổi", "Revision"),
    "site.overrides": ("Cấu hình riêng", "Own override"),
    "users.title": ("Người dùng", "Users"),
    "users.add": ("Thêm người dùng", "Add a user"),
    "users.role": ("Vai trò", "Role"),
    "users.sites": ("Địa điểm (cách nhau dấu phẩy)", "Sites (comma separated)"),
    "users.delete": ("Xóa", "Delete"),
    "error.title": ("Lỗi", "Error"),
    "error.back": ("Quay lại", "Back"),
    "lang.switch": ("English", "Tiếng Việt"),
}


def pick(query: str | None, cookie: str | None) -> Lang:
    for candidate in (query, cookie):
        for lang in LANGS:
            if candidate == lang:
                return lang
    return DEFAULT


def translate(lang: Lang, key: str) -> str:
    pair = MESSAGES.get(key)
    if pair is None:
        return key
    return pair[0] if lang == "vi" else pair[1]
