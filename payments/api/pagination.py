"""Cursor pages of payments: a bad page_size or cursor is a 400 naming it."""

from __future__ import annotations

from django.utils.dateparse import parse_datetime
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.pagination import Cursor, CursorPagination
from rest_framework.request import Request

from payments.api.filters import datetime_in_utc


class PaymentPagination(CursorPagination):
    """Cursor pages; a bad page_size or cursor is a 400 naming it, not ignored."""

    ordering = "-created_at"
    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    invalid_cursor_message = "Not a cursor from a next or previous link."

    def get_page_size(self, request: Request) -> int:
        raw = request.query_params.get(self.page_size_query_param, "")
        if raw == "":
            return self.page_size
        # Digits only (no sign, no spaces, no other scripts' digits), and few
        # of them: int() of thousands of digits is itself an error.
        size = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 4 else 0
        if not 1 <= size <= self.max_page_size:
            raise ValidationError(
                {
                    self.page_size_query_param: [
                        f"Must be an integer from 1 to {self.max_page_size}."
                    ]
                }
            )
        return size

    def decode_cursor(self, request: Request) -> Cursor | None:
        try:
            cursor = super().decode_cursor(request)
            # The position is compared with created_at: it must be a datetime.
            if cursor is not None and cursor.position is not None:
                position = parse_datetime(cursor.position)
                in_utc = None if position is None else datetime_in_utc(position)
                if in_utc is None:
                    raise ValueError(cursor.position)
                cursor = cursor._replace(position=in_utc.isoformat())
        except (NotFound, ValueError):
            raise ValidationError(
                {self.cursor_query_param: [self.invalid_cursor_message]}
            ) from None
        return cursor
