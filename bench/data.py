"""Synthetic benchmark data: N small CSV objects and one config file listing them.

Layout under a per-N folder (shared by every mode measured at that N):

    configs/objects.yaml             the N objects (code `bench`, cluster `default`)
    data/bench/<name>/part-00000.csv ~2,000 rows each, business-like columns

Deterministic (seeded per object), standard library only. The scale test
(`write_scale_configs`) writes configs only, all pointing at one tiny file.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from pathlib import Path

import yaml

CODE = "bench"
CLUSTER = "default"

_COUNTRIES = [
    ("DE", "EUR"),
    ("FR", "EUR"),
    ("NL", "EUR"),
    ("US", "USD"),
    ("GB", "GBP"),
    ("CH", "CHF"),
    ("SE", "SEK"),
]
_STATUSES = ["open", "shipped", "invoiced", "paid", "cancelled"]
_CATEGORIES = ["grocery", "apparel", "electronics", "home", "toys", "garden", "beauty"]
_SEGMENTS = ["Consumer", "SMB", "Enterprise", "Public"]
_FIRST = [
    "Anna",
    "Ben",
    "Clara",
    "David",
    "Elena",
    "Felix",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Mei",
    "Arjun",
]
_LAST = [
    "Muller",
    "Schmidt",
    "Weber",
    "Smith",
    "Jones",
    "Martin",
    "Rossi",
    "Garcia",
    "Jansen",
    "Novak",
]
_BASE = dt.datetime(2026, 1, 1)


def _orders(rng: random.Random, i: int) -> tuple[list[str], list]:
    country, currency = rng.choice(_COUNTRIES)
    qty = rng.randint(1, 20)
    price = rng.randint(99, 99_999) / 100
    return (
        [
            "order_id",
            "order_date",
            "customer_id",
            "country_code",
            "currency",
            "sku",
            "category",
            "quantity",
            "unit_price",
            "discount_pct",
            "net_amount",
            "status",
            "updated_at",
        ],
        [
            f"O{i:08d}",
            (_BASE + dt.timedelta(days=rng.randint(0, 180))).date().isoformat(),
            f"C{rng.randint(1, 50_000):06d}",
            country,
            currency,
            f"SKU-{rng.randint(1, 9_999):05d}",
            rng.choice(_CATEGORIES),
            qty,
            f"{price:.2f}",
            rng.choice([0, 0, 5, 10, 15]),
            f"{qty * price:.2f}",
            rng.choice(_STATUSES),
            (_BASE + dt.timedelta(seconds=rng.randint(0, 15_552_000))).isoformat() + "Z",
        ],
    )


def _customers(rng: random.Random, i: int) -> tuple[list[str], list]:
    first, last = rng.choice(_FIRST), rng.choice(_LAST)
    country, currency = rng.choice(_COUNTRIES)
    return (
        [
            "customer_id",
            "customer_number",
            "first_name",
            "last_name",
            "email",
            "country_code",
            "currency",
            "segment",
            "credit_limit",
            "created_at",
            "is_active",
        ],
        [
            i,
            f"C{100_000 + i}",
            first,
            last,
            f"{first}.{last}{i}@example.com".lower(),
            country,
            currency,
            rng.choice(_SEGMENTS),
            rng.randint(0, 500) * 100,
            (_BASE - dt.timedelta(days=rng.randint(0, 2_000))).isoformat() + "Z",
            rng.random() > 0.1,
        ],
    )


def _invoices(rng: random.Random, i: int) -> tuple[list[str], list]:
    _, currency = rng.choice(_COUNTRIES)
    amount = rng.randint(1_000, 2_000_000) / 100
    issued = _BASE + dt.timedelta(days=rng.randint(0, 180))
    return (
        [
            "invoice_id",
            "order_id",
            "issued_on",
            "due_on",
            "currency",
            "amount",
            "tax_amount",
            "paid",
            "payment_method",
        ],
        [
            f"INV{i:08d}",
            f"O{rng.randint(1, 10**6):08d}",
            issued.date().isoformat(),
            (issued + dt.timedelta(days=30)).date().isoformat(),
            currency,
            f"{amount:.2f}",
            f"{amount * 0.19:.2f}",
            rng.random() > 0.3,
            rng.choice(["card", "transfer", "paypal", "invoice"]),
        ],
    )


def _inventory(rng: random.Random, i: int) -> tuple[list[str], list]:
    return (
        ["snapshot_date", "store_id", "sku", "on_hand", "reserved", "reorder_point", "unit_cost"],
        [
            "2026-06-30",
            f"S{rng.randint(1, 120):03d}",
            f"SKU-{i % 10_000:05d}",
            rng.randint(0, 500),
            rng.randint(0, 40),
            rng.randint(5, 60),
            f"{rng.randint(50, 50_000) / 100:.2f}",
        ],
    )


TEMPLATES = {
    "orders": _orders,
    "customers": _customers,
    "invoices": _invoices,
    "inventory": _inventory,
}


def object_name(index: int) -> str:
    template = list(TEMPLATES)[index % len(TEMPLATES)]
    return f"{template}_{index:05d}"


def _config(name: str, path: str) -> dict:
    return {
        "code": CODE,
        "name": name,
        "source": {"format": "csv", "path": path, "options": {"header": True}},
        "target": {"table": f"{CODE}_{name}", "mode": "overwrite"},
        "cluster": CLUSTER,
    }


def write_objects(root: Path, n: int, rows: int) -> tuple[Path, Path]:
    """N objects with their CSVs; returns (configs_dir, data_root). Reused when already there."""
    configs, data = root / "configs", root / "data"
    marker = root / f".complete-{n}-{rows}"
    if marker.exists():
        return configs, data
    configs.mkdir(parents=True, exist_ok=True)
    entries = []
    for index in range(n):
        name = object_name(index)
        template = TEMPLATES[name.split("_")[0]]
        rng = random.Random(f"{name}:{rows}")
        folder = data / CODE / name
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "part-00000.csv", "w", newline="", encoding="utf-8") as handle:
            out = csv.writer(handle, lineterminator="\n")
            header, _ = template(rng, 0)
            out.writerow(header)
            for i in range(1, rows + 1):
                out.writerow(template(rng, i)[1])
        entries.append(_config(name, f"{CODE}/{name}/*.csv"))
    (configs / "objects.yaml").write_text(
        f"# {n} synthetic benchmark objects (bench/data.py)\n"
        + yaml.safe_dump(entries, sort_keys=False),
        encoding="utf-8",
    )
    marker.touch()
    return configs, data


def write_scale_configs(root: Path, n: int, files: int) -> tuple[Path, Path]:
    """N object configs spread over `files` YAML files, all reading one tiny CSV."""
    configs, data = root / "configs", root / "data"
    marker = root / f".complete-scale-{n}-{files}"
    if marker.exists():
        return configs, data
    (data / CODE).mkdir(parents=True, exist_ok=True)
    (data / CODE / "tiny.csv").write_text("id,value\n1,a\n2,b\n", encoding="utf-8")
    configs.mkdir(parents=True, exist_ok=True)
    per_file = -(-n // files)
    for f in range(files):
        chunk = [
            _config(f"scale_{i:05d}", f"{CODE}/tiny.csv")
            for i in range(f * per_file, min(n, (f + 1) * per_file))
        ]
        if chunk:
            (configs / f"system_{f:03d}.yaml").write_text(
                yaml.safe_dump(chunk, sort_keys=False), encoding="utf-8"
            )
    marker.touch()
    return configs, data
