"""The table of figures: one row per figure, with its target and PASS/FAIL/ERROR/skip."""
from __future__ import annotations

from .common import MB, fmt_s


class Results:
    def __init__(self, no_targets: bool):
        self.rows: list[dict] = []
        self.by_key: dict[str, dict] = {}
        self.no_targets = no_targets
        self.errors: list[str] = []

    def add(self, key: str, label: str, value=None, unit: str = "s", shown: str | None = None,
            target: str = "", ok: bool | None = None, note: str = "") -> dict:
        if shown is None:
            if value is None:
                shown = "-"
            elif unit == "s":
                shown = fmt_s(value)
            elif unit == "MB":
                shown = f"{value / MB:.1f} MB"
            elif unit == "MB/s":
                shown = f"{value / MB:.0f} MB/s"
            elif unit == "x":
                shown = f"{value:.2f}x"
            else:
                shown = f"{value:g} {unit}".strip()
        status = "" if ok is None else ("PASS" if ok else "FAIL")
        row = {"key": key, "label": label, "value": value, "unit": unit, "shown": shown,
               "target": target, "status": status, "note": note}
        if key in self.by_key:
            self.rows[self.rows.index(self.by_key[key])] = row
        else:
            self.rows.append(row)
        self.by_key[key] = row
        return row

    def error(self, key: str, label: str, why: str, target: str = "") -> None:
        self.errors.append(f"{label}: {why}")
        self.add(key, label, None, shown="ERROR", target=target, note=why)
        self.by_key[key]["status"] = "ERROR"

    def skip(self, key: str, label: str, why: str, target: str = "") -> None:
        self.add(key, label, None, shown="skipped", target=target, note=why)
        self.by_key[key]["status"] = "skip"

    def value(self, key: str):
        r = self.by_key.get(key)
        return None if r is None else r["value"]

    def missed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "FAIL"]

    def table(self) -> str:
        w1 = max(len(r["label"]) for r in self.rows)
        w2 = max(8, max(len(r["shown"]) for r in self.rows))
        w3 = max(6, max(len(r["target"]) for r in self.rows))
        lines = [f"{'figure':<{w1}}  {'value':>{w2}}  {'target':<{w3}}  result",
                 f"{'-' * w1}  {'-' * w2}  {'-' * w3}  ------"]
        for r in self.rows:
            line = f"{r['label']:<{w1}}  {r['shown']:>{w2}}  {r['target']:<{w3}}  {r['status']}"
            if r["note"]:
                line += f"  ({r['note']})"
            lines.append(line.rstrip())
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| figure | value | target | result |", "|---|---:|---|---|"]
        for r in self.rows:
            note = f" ({r['note']})" if r["note"] else ""
            lines.append(f"| {r['label']} | {r['shown']} | {r['target']} | {r['status']}{note} |")
        return "\n".join(lines)
