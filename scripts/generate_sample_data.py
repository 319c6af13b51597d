#!/usr/bin/env python3
"""Generate small, deterministic, business-like sample sources for the Bronze fan-out.

Layout written under ``--out`` (default: the repository's ``data/`` folder)::

    erp/<object>/*.csv          ERP system, CSV with a header row
    crm/<object>/*.jsonl        web/CRM system, JSON Lines (one object per line)
    finance/fx_rates/*.csv      daily FX reference rates, CSV with a header row

Every object is described by a config under ``configs/`` (``erp.yaml``,
``crm.yaml``, ``finance_fx_rates.yaml``).

The output is fully deterministic: a fixed seed, no clock, no hash-order
dependence, integer-cent arithmetic for money, and fixed line endings, so
running the script again reproduces byte-identical files.  Only the standard
library is used.

Usage::

    python scripts/generate_sample_data.py            # writes into ./data
    python scripts/generate_sample_data.py --out /tmp/sample
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import random
import uuid
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

SEED = 20260101
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "data"

# Reporting window covered by the sample data.
START = dt.date(2026, 1, 1)
END = dt.date(2026, 6, 30)
MONTHS = ["2026-01", "2026-02", "2026-03", "2026-04", "2026-05", "2026-06"]
WEB_DAYS = [dt.date(2026, 6, 24) + dt.timedelta(days=i) for i in range(7)]

FIRST_NAMES = [
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
    "Karla",
    "Lukas",
    "Maria",
    "Noah",
    "Olivia",
    "Paul",
    "Quinn",
    "Rosa",
    "Sam",
    "Tara",
    "Umar",
    "Vera",
    "Walter",
    "Xenia",
    "Yusuf",
    "Zoe",
    "Liam",
    "Emma",
    "Mateo",
    "Sofia",
    "Arjun",
    "Mei",
    "Lars",
    "Ingrid",
    "Pierre",
    "Chloe",
    "Marco",
    "Giulia",
    "Jan",
    "Eva",
]
LAST_NAMES = [
    "Muller",
    "Schmidt",
    "Schneider",
    "Fischer",
    "Weber",
    "Meyer",
    "Wagner",
    "Becker",
    "Hoffmann",
    "Schulz",
    "Smith",
    "Jones",
    "Brown",
    "Taylor",
    "Wilson",
    "Martin",
    "Bernard",
    "Dubois",
    "Rossi",
    "Russo",
    "Ferrari",
    "Garcia",
    "Lopez",
    "Jansen",
    "de Vries",
    "Nilsson",
    "Larsen",
    "Novak",
    "Kowalski",
    "Horvat",
    "Silva",
    "Costa",
]
# (city, country code, currency, postal code prefix)
CITIES = [
    ("Berlin", "DE", "EUR", "10"),
    ("Hamburg", "DE", "EUR", "20"),
    ("Munich", "DE", "EUR", "80"),
    ("Cologne", "DE", "EUR", "50"),
    ("Vienna", "AT", "EUR", "10"),
    ("Paris", "FR", "EUR", "75"),
    ("Lyon", "FR", "EUR", "69"),
    ("Amsterdam", "NL", "EUR", "10"),
    ("Milan", "IT", "EUR", "20"),
    ("Madrid", "ES", "EUR", "28"),
    ("Zurich", "CH", "CHF", "80"),
    ("Geneva", "CH", "CHF", "12"),
    ("London", "GB", "GBP", "EC"),
    ("Manchester", "GB", "GBP", "M1"),
    ("Stockholm", "SE", "SEK", "11"),
    ("New York", "US", "USD", "10"),
    ("Chicago", "US", "USD", "60"),
    ("Boston", "US", "USD", "02"),
]
STREETS = [
    "Main St",
    "Market Sq",
    "Station Rd",
    "Park Ave",
    "Harbour Way",
    "Mill Lane",
    "Church St",
    "High St",
    "Lindenallee",
    "Rue du Port",
    "Via Roma",
    "Kungsgatan",
]
COMPANY_WORDS = [
    "Nordic",
    "Alpine",
    "Atlas",
    "Blue",
    "Cobalt",
    "Delta",
    "Evergreen",
    "Falcon",
    "Granite",
    "Harbor",
    "Iron",
    "Juniper",
    "Keystone",
    "Lumen",
    "Meridian",
    "Northwind",
    "Orion",
    "Pioneer",
    "Quarry",
    "Redwood",
    "Summit",
    "Tidal",
    "Union",
    "Vertex",
    "Willow",
]
COMPANY_SUFFIXES = ["GmbH", "Ltd", "AG", "BV", "SAS", "Inc.", "AB", "S.p.A.", "Co."]
CATEGORIES = {
    "Kitchen": ["Kettle", "Toaster", "Knife Set", "Cutting Board", "Coffee Grinder", "Pan"],
    "Outdoor": ["Tent", "Sleeping Bag", "Headlamp", "Water Bottle", "Backpack", "Camp Stove"],
    "Office": ["Desk Lamp", "Notebook", "Monitor Stand", "Office Chair", "Pen Set", "Stapler"],
    "Electronics": ["USB-C Cable", "Power Bank", "Headphones", "Speaker", "Keyboard", "Mouse"],
    "Home": ["Throw Blanket", "Cushion", "Vase", "Candle", "Picture Frame", "Rug"],
}
SALARY_BANDS = {  # monthly, in cents
    "Head of Retail": (850000, 1200000),
    "CFO": (1000000, 1400000),
    "Head of Operations": (850000, 1150000),
    "Buyer": (420000, 600000),
    "Controller": (450000, 650000),
    "Data Analyst": (450000, 680000),
    "HR Partner": (400000, 580000),
    "Store Manager": (380000, 560000),
    "E-commerce Manager": (480000, 650000),
}
# category -> (price band in cents, weight band in grams)
CATEGORY_BANDS = {
    "Kitchen": ((1299, 14999), (300, 4000)),
    "Outdoor": ((999, 39999), (150, 6000)),
    "Office": ((399, 29999), (50, 15000)),
    "Electronics": ((899, 24999), (40, 2500)),
    "Home": ((599, 19999), (200, 8000)),
}
ADJECTIVES = ["Classic", "Pro", "Eco", "Compact", "Deluxe", "Travel", "Smart", "Basic"]
CURRENCIES = ["EUR", "USD", "GBP", "CHF", "SEK"]
CURRENCY_SCALE = {"EUR": 100, "USD": 108, "GBP": 85, "CHF": 95, "SEK": 1150}  # per 100 EUR, approx.


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def money(cents: int) -> str:
    """Integer cents -> '12.50'."""
    return str((Decimal(cents) / 100).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def iso_ts(ts: dt.datetime) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%SZ")


def rand_date(rng: random.Random, start: dt.date, end: dt.date) -> dt.date:
    return start + dt.timedelta(days=rng.randint(0, (end - start).days))


def rand_ts(rng: random.Random, day: dt.date, hour_lo: int = 0, hour_hi: int = 23) -> dt.datetime:
    return dt.datetime(
        day.year,
        day.month,
        day.day,
        rng.randint(hour_lo, hour_hi),
        rng.randint(0, 59),
        rng.randint(0, 59),
    )


def rand_uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def slug(text: str) -> str:
    return "".join(ch for ch in text.lower().replace(" ", ".") if ch.isalnum() or ch == ".")


def fake_email(first: str, last: str, n: int, domain: str = "example.com") -> str:
    return f"{slug(first)}.{slug(last)}{n}@{domain}"


def fake_phone(rng: random.Random) -> str:
    return f"+00 {rng.randint(100, 999)} {rng.randint(1000000, 9999999)}"


def maybe(rng: random.Random, p_null: float, value):
    return None if rng.random() < p_null else value


def csv_value(value) -> str:
    if value is None:
        return ""  # Spark's CSV reader turns empty fields into nulls
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Writer:
    """Writes object files and records what was written (for the summary).

    A file whose bytes are unchanged is left untouched, so re-running the script
    keeps mtimes too (the ingest fingerprints append-mode sources by path, size
    and mtime).  Files in an object folder that this run did not produce are
    removed by ``finish()``.
    """

    def __init__(self, out: Path) -> None:
        self.out = out
        self.summary: list[tuple[str, int, int]] = []
        self._written: dict[Path, set[str]] = {}

    def _write(self, system: str, obj: str, filename: str, content: str, rows: int) -> None:
        folder = self.out / system / obj
        folder.mkdir(parents=True, exist_ok=True)
        self._written.setdefault(folder, set()).add(filename)
        path = folder / filename
        data = content.encode("utf-8")
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)
        self.summary.append((str(path.relative_to(self.out)), rows, len(data)))

    def csv(
        self, system: str, obj: str, filename: str, columns: list[str], rows: list[dict]
    ) -> None:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(columns)
        for row in rows:
            w.writerow([csv_value(row[c]) for c in columns])
        self._write(system, obj, filename, buf.getvalue(), len(rows))

    def jsonl(self, system: str, obj: str, filename: str, rows: list[dict]) -> None:
        content = "".join(
            json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n" for row in rows
        )
        self._write(system, obj, filename, content, len(rows))

    def finish(self) -> list[Path]:
        """Remove stale data files (from earlier runs) in the object folders this run owns."""
        removed = []
        for folder, names in sorted(self._written.items()):
            for f in sorted(folder.iterdir()):
                if f.is_file() and f.suffix in (".csv", ".jsonl") and f.name not in names:
                    f.unlink()
                    removed.append(f)
        return removed


# ---------------------------------------------------------------------------
# ERP
# ---------------------------------------------------------------------------


def gen_stores(rng: random.Random) -> list[dict]:
    stores = []
    for i in range(1, 26):
        online = i in (1, 2)  # two webshops, the rest are physical stores
        if online:
            city, country, currency, _ = CITIES[0] if i == 1 else CITIES[12]
            name = "Webshop EU" if i == 1 else "Webshop UK"
        else:
            city, country, currency, _ = CITIES[(i - 3) % len(CITIES)]
            name = f"{city} {rng.choice(['Central', 'Mall', 'Station', 'Old Town', 'Harbour'])}"
        stores.append(
            {
                "store_id": i,
                "store_code": f"ST{i:03d}",
                "store_name": name,
                "city": None if online else city,
                "country_code": country,
                "currency": currency,
                "is_online": online,
                "square_meters": None if online else rng.randrange(120, 1800, 10),
                "opened_on": rand_date(rng, dt.date(2012, 1, 1), dt.date(2025, 9, 30)).isoformat(),
            }
        )
    return stores


def gen_employees(rng: random.Random, stores: list[dict]) -> list[dict]:
    employees = []
    titles = [
        "Sales Associate",
        "Sales Associate",
        "Sales Associate",
        "Cashier",
        "Stock Clerk",
        "Visual Merchandiser",
        "Customer Service Agent",
    ]
    # First 10 are head-office staff without store; first 3 are top managers.
    for i in range(1, 151):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        if i <= 3:
            store_id, title, manager_id = (
                None,
                ["Head of Retail", "CFO", "Head of Operations"][i - 1],
                None,
            )
        elif i <= 10:
            store_id, title, manager_id = (
                None,
                rng.choice(["Buyer", "Controller", "Data Analyst", "HR Partner"]),
                rng.randint(1, 3),
            )
        elif i <= 35:
            store = stores[i - 11]
            title = "E-commerce Manager" if store["is_online"] else "Store Manager"
            store_id, manager_id = store["store_id"], 1
        else:
            store = rng.choice(stores)
            store_id, title, manager_id = (
                store["store_id"],
                rng.choice(titles),
                11 + (store["store_id"] - 1),
            )
        hired = rand_date(rng, dt.date(2014, 1, 1), dt.date(2026, 5, 31))
        active = rng.random() > 0.08
        employees.append(
            {
                "employee_id": i,
                "first_name": first,
                "last_name": last,
                "email": fake_email(first, last, i, "corp.example.com"),
                "job_title": title,
                "store_id": store_id,
                "manager_id": manager_id,
                "hire_date": hired.isoformat(),
                "termination_date": None
                if active
                else rand_date(rng, max(hired, dt.date(2025, 1, 1)), END).isoformat(),
                "is_active": active,
                "monthly_salary": money(
                    rng.randrange(*SALARY_BANDS.get(title, (240000, 380000)), 500)
                ),
            }
        )
    return employees


def gen_suppliers(rng: random.Random) -> list[dict]:
    suppliers = []
    used = set()
    for i in range(1, 41):
        while True:
            name = f"{rng.choice(COMPANY_WORDS)} {rng.choice(['Trading', 'Supply', 'Goods', 'Manufacturing', 'Imports'])}"
            if name not in used:
                used.add(name)
                break
        city, country, currency, _ = rng.choice(CITIES)
        contact_first, contact_last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        suppliers.append(
            {
                "supplier_id": i,
                "supplier_name": f"{name}, {rng.choice(COMPANY_SUFFIXES)}",  # comma -> quoted CSV field
                "country_code": country,
                "city": city,
                "contact_name": f"{contact_first} {contact_last}",
                "contact_email": maybe(
                    rng, 0.1, fake_email(contact_first, contact_last, i, "supplier.example.com")
                ),
                "payment_terms_days": rng.choice([14, 30, 30, 45, 60]),
                "currency": currency,
                "is_preferred": rng.random() < 0.3,
            }
        )
    return suppliers


def gen_products(rng: random.Random, suppliers: list[dict]) -> list[dict]:
    products = []
    pid = 0
    for category in sorted(CATEGORIES):
        for noun in CATEGORIES[category]:
            for adj in rng.sample(ADJECTIVES, 4):
                pid += 1
                (p_lo, p_hi), (w_lo, w_hi) = CATEGORY_BANDS[category]
                price = rng.randrange(p_lo + 1, p_hi + 1, 50) - 1  # e.g. 12.49, 129.99
                cost = int(price * rng.uniform(0.35, 0.65))
                products.append(
                    {
                        "product_id": pid,
                        "sku": f"{category[:3].upper()}-{pid:05d}",
                        "product_name": f"{adj} {noun}",
                        "category": category,
                        "supplier_id": rng.choice(suppliers)["supplier_id"],
                        "unit_price_eur": money(price),
                        "unit_cost_eur": money(cost),
                        "weight_kg": maybe(rng, 0.15, str(Decimal(rng.randint(w_lo, w_hi)) / 1000)),
                        "launched_on": rand_date(
                            rng, dt.date(2019, 1, 1), dt.date(2025, 12, 31)
                        ).isoformat(),
                        "is_discontinued": rng.random() < 0.07,
                    }
                )
    return products  # 5 categories x 6 nouns x 4 variants = 120


def gen_customers(rng: random.Random) -> list[dict]:
    customers = []
    for i in range(1, 301):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        city, country, currency, plz = rng.choice(CITIES)
        is_business = rng.random() < 0.2
        customers.append(
            {
                "customer_id": i,
                "customer_number": f"C{100000 + i}",
                "first_name": first,
                "last_name": last,
                "company_name": f"{rng.choice(COMPANY_WORDS)} {rng.choice(COMPANY_SUFFIXES)}"
                if is_business
                else None,
                "email": fake_email(first, last, i),
                "phone": maybe(rng, 0.25, fake_phone(rng)),
                "street": f"{rng.randint(1, 180)} {rng.choice(STREETS)}",
                "postal_code": f"{plz}{rng.randint(100, 999)}",
                "city": city,
                "country_code": country,
                "currency": currency,
                "segment": "B2B"
                if is_business
                else rng.choice(["Consumer", "Consumer", "Loyalty"]),
                "created_at": iso_ts(
                    rand_ts(rng, rand_date(rng, dt.date(2018, 1, 1), dt.date(2025, 12, 31)))
                ),
                "is_active": rng.random() > 0.05,
            }
        )
    return customers


def gen_orders_and_lines(rng, customers, products, stores, employees):
    sellers_by_store: dict[int, list[int]] = {}
    for e in employees:
        if e["store_id"] is not None and e["job_title"] in ("Sales Associate", "Store Manager"):
            sellers_by_store.setdefault(e["store_id"], []).append(e["employee_id"])
    active_products = [p for p in products if not p["is_discontinued"]]

    dates = sorted(rand_date(rng, START, END) for _ in range(780))
    orders, lines = [], []
    line_id = 0
    for oid, order_date in enumerate(dates, start=1):
        customer = rng.choice(customers)
        # ~35% of orders come through the two webshops
        store = rng.choice(stores[:2]) if rng.random() < 0.35 else rng.choice(stores[2:])
        ts = rand_ts(rng, order_date, 8, 21)
        r = rng.random()
        status = (
            "cancelled"
            if r < 0.05
            else "open"
            if order_date > dt.date(2026, 6, 25)
            else "shipped"
            if r < 0.15
            else "delivered"
        )
        scale = CURRENCY_SCALE[customer["currency"]]
        n_lines = rng.choices([1, 2, 3, 4, 5], weights=[30, 30, 20, 12, 8])[0]
        total = 0
        for line_no, product in enumerate(rng.sample(active_products, n_lines), start=1):
            line_id += 1
            qty = rng.choices([1, 2, 3, 4, 6, 10], weights=[50, 25, 10, 7, 5, 3])[0]
            unit = int(Decimal(product["unit_price_eur"]) * 100) * scale // 100
            discount_pct = rng.choice([0, 0, 0, 0, 5, 10, 15, 20])
            amount = (unit * qty * (100 - discount_pct) + 50) // 100
            total += amount
            lines.append(
                {
                    "order_line_id": line_id,
                    "order_id": oid,
                    "line_number": line_no,
                    "product_id": product["product_id"],
                    "sku": product["sku"],
                    "quantity": qty,
                    "unit_price": money(unit),
                    "discount_pct": discount_pct,
                    "line_amount": money(amount),
                    "currency": customer["currency"],
                }
            )
        sellers = sellers_by_store.get(store["store_id"])
        orders.append(
            {
                "order_id": oid,
                "order_number": f"SO-{order_date:%Y%m}-{oid:05d}",
                "customer_id": customer["customer_id"],
                "store_id": store["store_id"],
                "sales_rep_id": None if store["is_online"] or not sellers else rng.choice(sellers),
                "order_ts": iso_ts(ts),
                "order_date": order_date.isoformat(),
                "status": status,
                "channel": "online" if store["is_online"] else "store",
                "currency": customer["currency"],
                "total_amount": money(total),
                "shipping_amount": money(
                    0
                    if total >= 5000 * scale // 100 or not store["is_online"]
                    else 495 * scale // 100
                ),
                "_total_cents": total,
            }
        )
    return orders, lines


def gen_invoices_and_payments(rng, orders):
    invoices, payments = [], []
    inv_id = pay_id = 0
    for o in orders:
        if o["status"] in ("cancelled", "open"):
            continue
        inv_id += 1
        order_date = dt.date.fromisoformat(o["order_date"])
        inv_date = order_date + dt.timedelta(days=rng.randint(0, 3))
        due = inv_date + dt.timedelta(days=30 if o["channel"] == "store" else 14)
        gross = o["_total_cents"] + int(Decimal(o["shipping_amount"]) * 100)
        net = gross * 100 // 119
        # payment behaviour
        r = rng.random()
        plan: list[tuple[int, int]]  # (days after invoice, cents)
        if o["channel"] == "store":
            plan = [(0, gross)]
        elif r < 0.75:
            plan = [(rng.randint(0, 20), gross)]
        elif r < 0.88:
            first = gross * rng.choice([30, 50, 70]) // 100
            plan = [(rng.randint(0, 10), first), (rng.randint(11, 40), gross - first)]
        else:
            plan = []  # unpaid
        paid_total = 0
        method = (
            "card"
            if o["channel"] == "store"
            else rng.choice(["card", "card", "paypal", "bank_transfer", "invoice"])
        )
        for days, cents in plan:
            pay_date = inv_date + dt.timedelta(days=days)
            if pay_date > END:
                continue
            pay_id += 1
            paid_total += cents
            payments.append(
                {
                    "payment_id": pay_id,
                    "invoice_id": inv_id,
                    "payment_ts": iso_ts(rand_ts(rng, pay_date, 6, 22)),
                    "payment_date": pay_date.isoformat(),
                    "amount": money(cents),
                    "currency": o["currency"],
                    "method": method,
                    "provider_reference": f"PAY{rng.getrandbits(40):010X}",
                    "is_refund": False,
                }
            )
        if paid_total == gross:
            status = "paid"
        elif paid_total > 0:
            status = "partially_paid"
        else:
            status = "overdue" if due < END else "issued"
        invoices.append(
            {
                "invoice_id": inv_id,
                "invoice_number": f"INV-{inv_date:%Y}-{inv_id:06d}",
                "order_id": o["order_id"],
                "customer_id": o["customer_id"],
                "invoice_date": inv_date.isoformat(),
                "due_date": due.isoformat(),
                "net_amount": money(net),
                "tax_amount": money(gross - net),
                "gross_amount": money(gross),
                "currency": o["currency"],
                "status": status,
                "paid_on": None
                if status != "paid"
                else max(p["payment_date"] for p in payments if p["invoice_id"] == inv_id),
            }
        )
    # a few refunds, dated after the original payment
    for p in rng.sample(payments, 12):
        pay_id += 1
        d = dt.date.fromisoformat(p["payment_date"]) + dt.timedelta(days=rng.randint(3, 20))
        d = min(d, END)
        payments.append(
            {
                **p,
                "payment_id": pay_id,
                "payment_ts": iso_ts(rand_ts(rng, d, 6, 22)),
                "payment_date": d.isoformat(),
                "amount": money(-int(Decimal(p["amount"]) * 100)),
                "provider_reference": f"REF{rng.getrandbits(40):010X}",
                "is_refund": True,
            }
        )
    payments.sort(key=lambda p: (p["payment_ts"], p["payment_id"]))
    return invoices, payments


def gen_inventory(rng, stores, products):
    rows = []
    snapshot = END.isoformat()
    inv_id = 0
    for store in stores:
        for product in sorted(rng.sample(products, 60), key=lambda p: p["product_id"]):
            inv_id += 1
            on_hand = rng.choices(
                [0, rng.randint(1, 20), rng.randint(20, 250)], weights=[8, 50, 42]
            )[0]
            rows.append(
                {
                    "inventory_id": inv_id,
                    "snapshot_date": snapshot,
                    "store_id": store["store_id"],
                    "product_id": product["product_id"],
                    "quantity_on_hand": on_hand,
                    "quantity_reserved": min(on_hand, rng.choice([0, 0, 0, 1, 2, 5])),
                    "reorder_point": rng.choice([5, 10, 15, 20, 25]),
                    "bin_location": None
                    if store["is_online"]
                    else f"{rng.choice('ABCDEF')}-{rng.randint(1, 30):02d}-{rng.randint(1, 6)}",
                    "last_counted_at": maybe(
                        rng, 0.1, iso_ts(rand_ts(rng, rand_date(rng, dt.date(2026, 4, 1), END)))
                    ),
                }
            )
    return rows


# ---------------------------------------------------------------------------
# CRM / web
# ---------------------------------------------------------------------------


def gen_contacts(rng, customers):
    contacts = []
    linked = rng.sample(customers, 240)
    linked.sort(key=lambda c: c["customer_id"])
    for i in range(1, 401):
        if i <= len(linked):
            c = linked[i - 1]
            first, last, email = c["first_name"], c["last_name"], c["email"]
            city, country, postal, street = (
                c["city"],
                c["country_code"],
                c["postal_code"],
                c["street"],
            )
            erp_id = c["customer_id"]
        else:
            first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
            email = fake_email(first, last, 1000 + i)
            city, country, _, plz = rng.choice(CITIES)
            postal, street = (
                f"{plz}{rng.randint(100, 999)}",
                f"{rng.randint(1, 180)} {rng.choice(STREETS)}",
            )
            erp_id = None
        created = rand_ts(rng, rand_date(rng, dt.date(2020, 1, 1), dt.date(2026, 6, 20)))
        contacts.append(
            {
                "contact_id": f"CT-{i:05d}",
                "erp_customer_id": erp_id,
                "first_name": first,
                "last_name": last,
                "email": email,
                "phone": maybe(rng, 0.4, fake_phone(rng)),
                "address": maybe(
                    rng,
                    0.1,
                    {
                        "street": street,
                        "postal_code": postal,
                        "city": city,
                        "country_code": country,
                    },
                ),
                "tags": sorted(
                    rng.sample(
                        [
                            "newsletter",
                            "vip",
                            "b2b",
                            "outdoor",
                            "kitchen",
                            "churn_risk",
                            "app_user",
                            "event_2025",
                        ],
                        rng.randint(0, 3),
                    )
                ),
                "lifecycle_stage": rng.choice(
                    ["lead", "lead", "prospect", "customer", "customer", "customer", "churned"]
                )
                if erp_id is None
                else rng.choice(["customer", "customer", "customer", "churned"]),
                "email_opt_in": rng.random() < 0.6,
                "lead_score": maybe(rng, 0.2, rng.randint(0, 100)),
                "created_at": iso_ts(created),
                "updated_at": iso_ts(
                    created + dt.timedelta(days=rng.randint(0, 200), seconds=rng.randint(0, 86399))
                ),
            }
        )
    return contacts


def gen_campaigns(rng):
    themes = [
        "Spring Sale",
        "Summer Outdoor",
        "Back to Office",
        "Kitchen Week",
        "Loyalty Boost",
        "New Arrivals",
        "Clearance",
        "Newsletter",
        "Retargeting",
        "Brand Awareness",
    ]
    campaigns = []
    for i in range(1, 61):
        theme = themes[(i - 1) % len(themes)]
        start = rand_date(rng, dt.date(2025, 10, 1), dt.date(2026, 6, 20))
        ongoing = rng.random() < 0.2
        channels = sorted(
            rng.sample(
                ["email", "social", "search", "display", "affiliate", "sms"], rng.randint(1, 3)
            )
        )
        medium = channels[0]
        campaigns.append(
            {
                "campaign_id": f"CMP-{i:04d}",
                "name": f"{theme} {start:%Y-%m} #{i}",
                "objective": rng.choice(["awareness", "acquisition", "retention", "reactivation"]),
                "channels": channels,
                "start_date": start.isoformat(),
                "end_date": None
                if ongoing
                else (start + dt.timedelta(days=rng.choice([7, 14, 21, 30, 45]))).isoformat(),
                "budget_eur": float(Decimal(rng.randrange(50000, 2500000, 5000)) / 100),
                "utm": {
                    "source": rng.choice(["newsletter", "google", "meta", "partner"]),
                    "medium": medium,
                    "campaign": slug(theme).replace(".", "_") + f"_{i}",
                },
                "owner_email": f"marketing{rng.randint(1, 6)}@corp.example.com",
                "is_active": ongoing or start >= dt.date(2026, 6, 1),
            }
        )
    return campaigns


def gen_web_events(rng, contacts, campaigns, products):
    by_day = {}
    event_types = [
        "page_view",
        "page_view",
        "page_view",
        "page_view",
        "search",
        "product_view",
        "product_view",
        "add_to_cart",
        "checkout_started",
        "purchase",
        "signup",
    ]
    devices = [
        ("desktop", "Windows", "Chrome"),
        ("desktop", "macOS", "Safari"),
        ("mobile", "iOS", "Safari"),
        ("mobile", "Android", "Chrome"),
        ("tablet", "iPadOS", "Safari"),
        ("desktop", "Linux", "Firefox"),
    ]
    locales = ["de-DE", "en-GB", "en-US", "fr-FR", "it-IT", "nl-NL", "sv-SE"]
    active_campaigns = [c["campaign_id"] for c in campaigns if c["is_active"]] or [
        campaigns[0]["campaign_id"]
    ]
    for day in WEB_DAYS:
        events = []
        n_sessions = rng.randint(55, 75)
        for _ in range(n_sessions):
            session_id = rand_uuid(rng)
            anonymous_id = f"anon-{rng.getrandbits(48):012x}"
            contact = rng.choice(contacts) if rng.random() < 0.45 else None
            device, os_name, browser = rng.choice(devices)
            locale = rng.choice(locales)
            campaign = rng.choice(active_campaigns) if rng.random() < 0.3 else None
            ts = rand_ts(rng, day, 6, 22)
            referrer = rng.choice(
                [
                    None,
                    "https://www.google.example/",
                    "https://social.example/feed",
                    "https://newsletter.example/",
                ]
            )
            for _ in range(rng.randint(1, 7)):
                etype = rng.choice(event_types)
                product = rng.choice(products)
                path = {
                    "search": "/search",
                    "product_view": f"/p/{product['sku'].lower()}",
                    "add_to_cart": "/cart",
                    "checkout_started": "/checkout",
                    "purchase": "/checkout/thank-you",
                    "signup": "/account/new",
                }.get(
                    etype,
                    rng.choice(["/", "/c/kitchen", "/c/outdoor", "/c/office", "/stores", "/help"]),
                )
                props = {}
                if etype == "search":
                    props["query"] = rng.choice(
                        ["tent", "kettle", "usb c", "desk lamp", "gift", "rug"]
                    )
                    props["results"] = rng.randint(0, 48)
                elif etype in ("product_view", "add_to_cart"):
                    props["sku"] = product["sku"]
                    props["price_eur"] = float(product["unit_price_eur"])
                    if etype == "add_to_cart":
                        props["quantity"] = rng.randint(1, 3)
                elif etype == "purchase":
                    props["order_value_eur"] = float(money(rng.randint(1500, 45000)))
                    props["items"] = rng.randint(1, 5)
                events.append(
                    {
                        "event_id": rand_uuid(rng),
                        "event_ts": iso_ts(ts),
                        "event_type": etype,
                        "session_id": session_id,
                        "anonymous_id": anonymous_id,
                        "contact_id": contact["contact_id"] if contact else None,
                        "campaign_id": campaign,
                        "page": {"url": f"https://shop.example.com{path}", "referrer": referrer},
                        "context": {
                            "device_type": device,
                            "os": os_name,
                            "browser": browser,
                            "locale": locale,
                        },
                        "properties": props or None,
                    }
                )
                referrer = f"https://shop.example.com{path}"
                ts += dt.timedelta(seconds=rng.randint(5, 240))
        events.sort(key=lambda e: (e["event_ts"], e["event_id"]))
        by_day[day] = events
    return by_day


def gen_support_tickets(rng, contacts, orders):
    tickets = []
    subjects = [
        "Where is my order?",
        "Item arrived damaged",
        "Request refund",
        "Change delivery address",
        "Invoice copy needed",
        "Product question",
        "Cannot log in",
        "Warranty claim",
        "Wrong item received",
        "Cancel my order",
    ]
    orders_by_customer: dict[int, list[dict]] = {}
    for o in orders:
        orders_by_customer.setdefault(o["customer_id"], []).append(o)
    for i in range(1, 261):
        contact = rng.choice(contacts)
        cust_orders = (
            orders_by_customer.get(contact["erp_customer_id"])
            if contact["erp_customer_id"]
            else None
        )
        order = rng.choice(cust_orders) if cust_orders and rng.random() < 0.8 else None
        first_day = (
            dt.date.fromisoformat(order["order_date"]) + dt.timedelta(days=1) if order else START
        )
        opened = rand_ts(rng, rand_date(rng, min(first_day, END), END))
        status = rng.choice(["closed", "closed", "closed", "resolved", "open", "pending"])
        closed = (
            opened + dt.timedelta(hours=rng.randint(1, 240))
            if status in ("closed", "resolved")
            else None
        )
        priority = rng.choices(["low", "normal", "high", "urgent"], weights=[25, 50, 20, 5])[0]
        tickets.append(
            {
                "ticket_id": 50000 + i,
                "contact_id": contact["contact_id"],
                "order_number": order["order_number"] if order else None,
                "subject": rng.choice(subjects),
                "channel": rng.choice(["email", "email", "chat", "phone", "web_form"]),
                "priority": priority,
                "status": status,
                "assignee_email": maybe(rng, 0.15, f"agent{rng.randint(1, 12)}@corp.example.com"),
                "opened_at": iso_ts(opened),
                "closed_at": iso_ts(closed) if closed else None,
                "first_response_minutes": maybe(rng, 0.1, rng.randint(2, 2880)),
                "sla_breached": rng.random() < (0.3 if priority in ("high", "urgent") else 0.1),
                "satisfaction_score": rng.randint(1, 5) if closed and rng.random() < 0.6 else None,
                "tags": sorted(
                    rng.sample(
                        ["shipping", "billing", "returns", "account", "product", "escalated"],
                        rng.randint(0, 2),
                    )
                ),
            }
        )
    return tickets


# ---------------------------------------------------------------------------
# finance
# ---------------------------------------------------------------------------


def gen_fx_rates(rng):
    rates = {
        "USD": Decimal("1.0850"),
        "GBP": Decimal("0.8550"),
        "CHF": Decimal("0.9450"),
        "SEK": Decimal("11.4800"),
        "JPY": Decimal("162.50"),
    }
    rows = []
    day = START
    while day <= END:
        if day.weekday() < 5 and not (day.month == 1 and day.day == 1):
            for quote in ["USD", "GBP", "CHF", "SEK", "JPY"]:
                step = Decimal(rng.randint(-40, 40)) / Decimal(10000)
                rates[quote] = (rates[quote] * (1 + step)).quantize(
                    Decimal("0.000001"), rounding=ROUND_HALF_UP
                )
                rows.append(
                    {
                        "rate_date": day.isoformat(),
                        "base_currency": "EUR",
                        "quote_currency": quote,
                        "rate": str(rates[quote]),
                        "source": "sample-ecb",
                        "published_at": f"{day.isoformat()}T15:00:00Z",
                    }
                )
        day += dt.timedelta(days=1)
    return rows


# ---------------------------------------------------------------------------


def generate(out: Path) -> Writer:
    # One RNG per object so objects stay stable if another generator changes.
    def r(name: str) -> random.Random:
        return random.Random(f"{SEED}:{name}")

    w = Writer(out)

    stores = gen_stores(r("stores"))
    employees = gen_employees(r("employees"), stores)
    suppliers = gen_suppliers(r("suppliers"))
    products = gen_products(r("products"), suppliers)
    customers = gen_customers(r("customers"))
    orders, lines = gen_orders_and_lines(r("orders"), customers, products, stores, employees)
    invoices, payments = gen_invoices_and_payments(r("invoices"), orders)
    inventory = gen_inventory(r("inventory"), stores, products)

    def cols(rows):
        return [c for c in rows[0] if not c.startswith("_")]

    w.csv("erp", "stores", "stores.csv", cols(stores), stores)
    w.csv("erp", "employees", "employees.csv", cols(employees), employees)
    w.csv("erp", "suppliers", "suppliers.csv", cols(suppliers), suppliers)
    w.csv("erp", "products", "products.csv", cols(products), products)
    w.csv("erp", "customers", "customers.csv", cols(customers), customers)
    for month in MONTHS:  # multi-file object: one extract per month
        w.csv(
            "erp",
            "orders",
            f"orders_{month}.csv",
            cols(orders),
            [o for o in orders if o["order_date"].startswith(month)],
        )
        w.csv(
            "erp",
            "payments",
            f"payments_{month}.csv",
            cols(payments),
            [p for p in payments if p["payment_date"].startswith(month)],
        )
    w.csv("erp", "order_lines", "order_lines.csv", cols(lines), lines)
    w.csv("erp", "invoices", "invoices.csv", cols(invoices), invoices)
    w.csv("erp", "inventory", "inventory_2026-06-30.csv", cols(inventory), inventory)

    contacts = gen_contacts(r("contacts"), customers)
    campaigns = gen_campaigns(r("campaigns"))
    web_events = gen_web_events(r("web_events"), contacts, campaigns, products)
    tickets = gen_support_tickets(r("support_tickets"), contacts, orders)
    w.jsonl("crm", "contacts", "contacts.jsonl", contacts)
    w.jsonl("crm", "campaigns", "campaigns.jsonl", campaigns)
    for day, events in web_events.items():  # multi-file object: one file per day
        w.jsonl("crm", "web_events", f"day={day.isoformat()}.jsonl", events)
    w.jsonl("crm", "support_tickets", "support_tickets.jsonl", tickets)

    fx = gen_fx_rates(r("fx_rates"))
    w.csv("finance", "fx_rates", "fx_rates_2026H1.csv", cols(fx), fx)
    w.removed = w.finish()
    return w


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output data root (default: {DEFAULT_OUT})"
    )
    parser.add_argument("--quiet", action="store_true", help="do not print the per-file summary")
    args = parser.parse_args()

    w = generate(args.out.resolve())
    if not args.quiet:
        total_rows = total_bytes = 0
        for rel, rows, size in w.summary:
            print(f"{rel:45s} {rows:6d} rows {size:9d} bytes")
            total_rows += rows
            total_bytes += size
        for f in w.removed:
            print(f"removed stale {f.relative_to(args.out.resolve())}")
        print(f"{len(w.summary)} files, {total_rows} rows, {total_bytes} bytes -> {args.out}")


if __name__ == "__main__":
    main()
