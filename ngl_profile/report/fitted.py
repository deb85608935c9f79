"""Terminal tables that stay readable at any width, 80 columns included.

rich squeezes a table that is too wide by shrinking every column, which turns numbers into blank or
"…" cells. A `FittedTable` decides at print time, from the console's width: the whole table when it
fits (the usual box, then a compact one); otherwise the lead column (the optimizer) wrapped, columns
that say nothing (the same in every row) left out and named in the caption, and the rest spread over
as many tables as needed, each led by the lead column. Numbers are never wrapped or cut.
"""
from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

__all__ = ["Column", "FittedTable"]


@dataclass(frozen=True, slots=True)
class Column:
    header: str
    """may hold a newline: the name over its unit"""
    cells: tuple
    """one per row: plain text or rich markup"""
    justify: str = "right"
    group: int = 0
    """columns of one group stay in one table when they fit together"""
    droppable: str = ""
    """when set: what the caption says about this column if it is left out of a narrow table"""
    narrow: tuple = ()
    """the columns that stand for this one in a narrow table, when it has a narrower form (a delta and
    its percentage side by side rather than in one cell)"""


def _wrap_lead(cell: str, width: int) -> str:
    return "\n".join(textwrap.wrap(cell, width, break_on_hyphens=True, break_long_words=False)) or cell


class FittedTable:
    """`lead`'s cells are plain text (no markup), styled per row by `lead_styles`; `sections` are the
    rows that start a new section (a rule or a gap above them)."""

    def __init__(self, lead: Column, columns: list[Column], *, title: str = "", caption: str = "",
                 lead_styles: tuple = (), sections: frozenset = frozenset()):
        self.lead, self.columns, self.title, self.caption = lead, columns, title, caption
        self.lead_styles, self.sections = lead_styles, sections

    def _table(self, columns: list[Column], *, compact: bool, lead_width: int | None = None, title: str = "",
               caption: str = ""):
        from rich import box
        from rich.table import Table
        from rich.text import Text

        style = dict(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, collapse_padding=True) if compact else {}
        t = Table(title=title or None, caption=caption or None, caption_justify="left", **style)
        lead = self.lead
        t.add_column(lead.header, justify=lead.justify, no_wrap=lead_width is None)
        for c in columns:
            t.add_column(c.header, justify=c.justify, no_wrap=True)  # a number is never wrapped
        cells = [c.cells for c in columns]
        for i, name in enumerate(lead.cells):
            if i in self.sections and i:
                t.add_section()
            shown = name if lead_width is None else _wrap_lead(name, lead_width)
            look = self.lead_styles[i] if i < len(self.lead_styles) else ""
            t.add_row(Text(shown, style=look), *(col[i] for col in cells))
        return t

    @staticmethod
    def _fits(console, options, table) -> bool:
        from rich.measure import Measurement

        # measured without a limit: Measurement.get clamps to the width it is given
        wide = options.update(width=1 << 14)
        return Measurement.get(console, wide, table).maximum <= options.max_width

    def __rich_console__(self, console, options):
        for compact in (False, True):
            t = self._table(self.columns, compact=compact, title=self.title, caption=self.caption)
            if self._fits(console, options, t):
                yield t
                return
        dropped = [c for c in self.columns if c.droppable]
        kept = [n for c in self.columns if not c.droppable for n in (c.narrow or (c,))]
        # the lead column wraps at spaces and hyphens, never inside a word such as a metric's name
        chunk = max((len(w) for cell in self.lead.cells for w in re.split(r"(?<=-)|\s+", cell)), default=8)
        longest = max((len(cell) for cell in self.lead.cells), default=8)
        lead_width = max(12, chunk, min(longest, options.max_width * 2 // 7))

        def fits(cols):
            return self._fits(console, options, self._table(cols, compact=True, lead_width=lead_width))

        parts: list[list[Column]] = []
        cur: list[Column] = []
        for g in dict.fromkeys(c.group for c in kept):
            group = [c for c in kept if c.group == g]
            if fits(cur + group):
                cur += group
                continue
            if cur:
                parts.append(cur)
                cur = []
            for col in group:  # a group too wide for one table: split it column by column
                if cur and not fits(cur + [col]):
                    parts.append(cur)
                    cur = []
                cur.append(col)
        if cur:
            parts.append(cur)
        notes = ", ".join(c.droppable for c in dropped)
        caption = self.caption.rstrip(".") + (f". Not shown (the same in every row): {notes}." if notes else "")
        for i, cols in enumerate(parts):
            title = self.title if i == 0 else ""
            if len(parts) > 1:
                title = f"{title} ({i + 1}/{len(parts)})" if title else f"({i + 1}/{len(parts)})"
            yield self._table(cols, compact=True, lead_width=lead_width, title=title)
        if caption:  # at the console's width, not squeezed under the last (narrowest) part
            from rich.text import Text

            yield Text(caption, style="table.caption")
