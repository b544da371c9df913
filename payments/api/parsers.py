"""Request body parsers: DRF's, with every malformed body a 400."""

from __future__ import annotations

from typing import Any

from rest_framework import parsers
from rest_framework.exceptions import ParseError


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser; JSON nested deeper than Python can parse is a 400 too.

    DRF turns a ValueError into its ParseError but not the RecursionError
    of an array nested tens of thousands deep (a 500).
    """

    def parse(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().parse(*args, **kwargs)
        except RecursionError:
            raise ParseError("JSON parse error - nested too deeply.") from None
