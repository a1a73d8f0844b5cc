"""Generate the extraction data set: customer-support messages with gold JSON fields.

    python scripts/make_extraction_data.py

Writes `configs/extraction/data/support.jsonl`: 480 synthetic banking / payments / cards
support messages, each with a gold object holding `amount`, `currency`, `date`,
`account_type` and `merchant` (null where the message does not say). Everything here is
project-authored: the templates, merchant names and filler were written for cascadekit, no
third-party text is used. The generator is deterministic (`random.Random(0)`), standard
library only.

Templates mark each field with a slot: `{amount}`, `{date}`, `{account}` or `{merchant}`. A
slot inside `[with slot|fallback]` may be dropped for a row; the fallback text (which never
states the field) is used instead and the gold value becomes null.
"""

import datetime
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

OUTPUT = (
    Path(__file__).resolve().parent.parent / "configs" / "extraction" / "data" / "support.jsonl"
)
N_ROWS = 480
FIELDS = ("amount", "currency", "date", "account_type", "merchant")
SLOTS = ("amount", "date", "account", "merchant")
MIN_WORDS, MAX_WORDS = 10, 60

# --- merchants (invented or generic names) --------------------------------------------------

SHOPS = [
    "Blue Fern Cafe", "QuickMart", "Northside Pharmacy", "Harbor Lane Books",
    "Pine & Co Hardware", "Sunny Side Diner", "Copper Kettle Bakery", "Greenway Grocers",
    "Urban Threads", "Orbit Electronics", "Lakeside Pet Supply", "DailyGrind Coffee",
    "Fresh Basket", "Redleaf Pizza", "Golden Wok", "Summit Outdoor Gear", "Lumen Pharmacy",
    "HomeNest Furniture", "Starlight Salon", "Bayview Market", "Crescent Books",
    "Pebble Toys", "Amberly Florist", "Oak & Ember Grill", "Polar Scoop Ice Cream",
    "Cedar Point Auto", "SwiftWash Laundry", "NovaTech Store", "Harvest Table",
    "Bluebird Bakery", "Trailhead Coffee", "Mosaic Market", "Rosie's Diner",
    "Willow Creek Vet", "Maple Street Dental", "Granite City Fuel",
]  # fmt: skip
SUBSCRIPTIONS = [
    "StreamBox", "FitLoop Gym", "CloudVault Storage", "TuneNest", "PixelPlay Games",
    "LoopCast Premium", "Ironclad Fitness", "Nimbus Internet", "Echo Mobile",
    "BrightPath Tutoring", "ReadRiver Books Club", "SnapFit Studio",
]  # fmt: skip
TRAVEL = [
    "Riverbend Hotel", "SkyHop Airlines", "Silverline Taxi", "Tidewater Marina",
    "ParkRight Parking", "Coastal Rail", "Velvet Room Cinema", "Juniper Wellness Spa",
]  # fmt: skip
PAYEES = [
    "Bright Spark Utilities", "Cornerstone Insurance", "Meadow Farms Dairy",
    "Oakline Property Management", "Kestrel Logistics", "Harbor Lane Dental Group",
]  # fmt: skip
ALL_MERCHANTS = SHOPS + SUBSCRIPTIONS + TRAVEL + PAYEES

# --- accounts --------------------------------------------------------------------------------

ACCOUNT_WORDS = {
    "checking": ["checking account", "checking", "checking acct", "everyday checking account"],
    "savings": ["savings account", "savings", "savings acct", "high-yield savings account"],
    "credit card": ["credit card", "credit card", "rewards credit card", "credit card"],
    "debit card": ["debit card", "debit card", "bank debit card", "debit card"],
}
CARDS = ("credit card", "debit card")
BANK = ("checking", "savings")
SPEND = ("credit card", "debit card", "checking")
ANY = ("checking", "savings", "credit card", "debit card")

# --- templates ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Template:
    intent: str
    text: str
    accounts: tuple[str, ...] = SPEND
    merchants: tuple[str, ...] = tuple(SHOPS + TRAVEL)
    amount_kind: str = "purchase"


SUBS = tuple(SUBSCRIPTIONS)
PAY = tuple(PAYEES + SHOPS[:10])
STORES = tuple(SHOPS)
RETAIL = (
    "QuickMart", "Harbor Lane Books", "Pine & Co Hardware", "Urban Threads", "Orbit Electronics",
    "Lakeside Pet Supply", "Summit Outdoor Gear", "HomeNest Furniture", "Crescent Books",
    "Pebble Toys", "NovaTech Store", "Mosaic Market", "Northside Pharmacy",
)  # fmt: skip
ATM_HOSTS = (
    "QuickMart", "Northside Pharmacy", "Greenway Grocers", "Fresh Basket", "Bayview Market",
    "Lumen Pharmacy", "Mosaic Market", "Granite City Fuel", "NovaTech Store", "Harvest Table",
)  # fmt: skip

TEMPLATES = [
    # disputed charge
    Template("dispute", "I want to dispute [a charge of {amount}|a charge] [from {merchant}|from a merchant] on my [{account}|account][ dated {date}|]. I never authorized this."),  # noqa: E501
    Template("dispute", "[{merchant}|A store] charged me [{amount}|money] [on {date}|recently] for something I had already returned. Please open a dispute on my [{account}|account].", SPEND, RETAIL),  # noqa: E501
    Template("dispute", "there is a charge[ for {amount}|][ at {merchant}|][ on {date}|] that i did not make. it hit my [{account}|account] and i want it reversed asap"),  # noqa: E501
    Template("dispute", "[{merchant}|The merchant] overcharged my [{account}|card][ on {date}|]: I was billed [{amount}|far more] instead of the price on the shelf. I want to dispute it."),  # noqa: E501
    # refund not received
    Template("refund", "I returned an item to [{merchant}|the store][ on {date}|] and was promised a refund[ of {amount}|] to my [{account}|account], but it still hasn't arrived.", SPEND, RETAIL),  # noqa: E501
    Template("refund", "Still waiting on my refund[ of {amount}|] from [{merchant}|the merchant]. They said it was processed [on {date}|weeks ago] and would go back to my [{account}|card]."),  # noqa: E501
    Template("refund", "[{merchant}|The shop] confirmed a refund[ of {amount}|][ on {date}|], but nothing has shown up on my [{account}|statement]. Can you check on it?"),  # noqa: E501
    Template("refund", "where is my refund?? [{merchant}|they] cancelled my order[ on {date}|] and the [{amount}|money] was supposed to go back on my [{account}|card]"),  # noqa: E501
    Template("refund", "Can you trace a refund for me? [Merchant: {merchant}. |][Amount: {amount}. |][Date of return: {date}. |][Paid with: {account}. |]It has been over ten business days.", SPEND, RETAIL),  # noqa: E501
    Template("refund", "refund from [{merchant}|them][ {amount}|] still missing, returned it [on {date}|ages ago]. [{account}|card]", SPEND, RETAIL),  # noqa: E501
    # double charge
    Template("double", "I was charged twice[ for {amount}|] at [{merchant}|a restaurant][ on {date}|]. Both charges show on my [{account}|account]."),  # noqa: E501
    Template("double", "[{merchant}|A merchant] took [{amount}|the payment] two times from my [{account}|account][ on {date}|]. Please remove the duplicate."),  # noqa: E501
    Template("double", "Double charge: [{merchant}|the store] billed me [{amount}|the same amount] twice[ on {date}|] on my [{account}|card]. I only bought one thing!"),  # noqa: E501
    Template("double", "hi my [{account}|card] shows [the same purchase of {amount}|the same purchase] from [{merchant}|one shop] twice[ on {date}|], i only paid once"),  # noqa: E501
    Template("double", "double charged[ {amount}|][ at {merchant}|][ {date}|], [{account}|card]. pls refund one"),  # noqa: E501
    # card declined
    Template("declined", "My [{account}|card] was declined at [{merchant}|a shop][ on {date}|] when I tried to pay[ {amount}|]. I have enough funds, what happened?", CARDS),  # noqa: E501
    Template("declined", "Why did you decline my [{account}|card] at [{merchant}|the checkout][ on {date}|]? [The purchase was only {amount}.|It was a small purchase.]", CARDS),  # noqa: E501
    Template("declined", "Got declined trying to buy something[ for {amount}|] at [{merchant}|a store][ on {date}|]. Used my [{account}|card]. Very embarrassing.", CARDS),  # noqa: E501
    Template("declined", "[On {date}, my|My] [{account}|card] got rejected at [{merchant}|the register] for a payment[ of {amount}|]. Is there a block on it?", CARDS),  # noqa: E501
    Template("declined", "[{merchant}|the store] declined my [{account}|card][ {amount}|][ {date}|] ?? fix it please", CARDS),  # noqa: E501
    # transfer between accounts
    Template("transfer", "I moved [{amount}|money] into my [{account}|other account][ on {date}|] to cover [a bill from {merchant}|a bill], but the transfer still shows pending.", BANK, PAY, "large"),  # noqa: E501
    Template("transfer", "The transfer of [{amount}|funds] from my [{account}|account][ on {date}|] never arrived. It was meant for [{merchant}|my landlord].", BANK, PAY, "large"),  # noqa: E501
    Template("transfer", "A scheduled transfer[ of {amount}|] to my [{account}|account][ for {date}|] didn't go through, so my payment to [{merchant}|a vendor] bounced.", BANK, PAY, "large"),  # noqa: E501
    Template("transfer", "help, i sent [{amount}|a payment] from my [{account}|account] to [{merchant}|a business][ on {date}|] and it's showing as failed but the money is gone", BANK, PAY, "large"),  # noqa: E501
    # unknown transaction
    Template("unknown", "What is this charge from [{merchant}|some company][ for {amount}|] on my [{account}|statement]?[ It's dated {date}.|] I don't recognize it at all."),  # noqa: E501
    Template("unknown", "I don't know what [{merchant}|this merchant] is. There's [a payment of {amount}|a payment] to them[ on {date}|] on my [{account}|account]."),  # noqa: E501
    Template("unknown", "Unfamiliar transaction on my [{account}|account][ from {date}|]: [{merchant}|a name I don't know], [{amount}|no idea what for]. Is this fraud?"),  # noqa: E501
    Template("unknown", "somebody used my [{account}|card] at [{merchant}|a place i've never been][ on {date}|]. [{amount}|a big chunk of money] gone. please block it", CARDS),  # noqa: E501
    # ATM withdrawal problem
    Template("atm", "The ATM at [{merchant}|a gas station] didn't give me any cash but took [{amount}|the money] from my [{account}|account][ on {date}|].", ANY, ATM_HOSTS, "atm"),  # noqa: E501
    Template("atm", "I tried to withdraw [{amount}|cash][ on {date}|] at the machine inside [{merchant}|the mall] with my [{account}|card]. No cash came out, but my balance dropped.", CARDS, ATM_HOSTS, "atm"),  # noqa: E501
    Template("atm", "ATM problem[ on {date}|]: asked for [{amount}|cash] at the machine by [{merchant}|a store], only got half of it. It came out of my [{account}|account].", ANY, ATM_HOSTS, "atm"),  # noqa: E501
    Template("atm", "the cash machine outside [{merchant}|the supermarket] kept my [{account}|card][ on {date}|] right after i took out [{amount}|some money]. what do i do", CARDS, ATM_HOSTS, "atm"),  # noqa: E501
    # subscription cancellation
    Template("subscription", "I cancelled my [{merchant}|streaming] subscription[ on {date}|] but I'm still being charged [{amount} a month|every month] on my [{account}|card].", SPEND, SUBS, "subscription"),  # noqa: E501
    Template("subscription", "Please stop the recurring payment to [{merchant}|a subscription service] from my [{account}|account]. [It's {amount} a month|It's charged monthly] and I never use it.[ The last one was on {date}.|]", SPEND, SUBS, "subscription"),  # noqa: E501
    Template("subscription", "[{merchant}|An app] renewed my plan[ on {date}|] without asking and took [{amount}|money] from my [{account}|account]. I want it cancelled and refunded.", SPEND, SUBS, "subscription"),  # noqa: E501
    Template("subscription", "how do i cancel [{merchant}|this membership]? they charged my [{account}|card][ {amount}|] again[ on {date}|] even though i quit", SPEND, SUBS, "subscription"),  # noqa: E501
    # fee complaint
    Template("fee", "Why was I charged [an overdraft fee of {amount}|an overdraft fee] on my [{account}|account][ on {date}|]? It happened after a small purchase at [{merchant}|a store].", ("checking",), STORES, "fee"),  # noqa: E501
    Template("fee", "You charged me [a foreign transaction fee of {amount}|a foreign transaction fee] on my [{account}|card] for a stay at [{merchant}|a hotel][ on {date}|]. Nobody told me about this fee.", CARDS, tuple(TRAVEL), "fee"),  # noqa: E501
    Template("fee", "This late fee[ of {amount}|] on my [{account}|account][ dated {date}|] is unfair, my payment to [{merchant}|the company] went out on time.", ANY, PAY, "fee"),  # noqa: E501
    Template("fee", "I got hit with a fee[ of {amount}|] when I paid [{merchant}|a merchant] with my [{account}|card][ on {date}|]. What is this fee even for?", SPEND, STORES, "fee"),  # noqa: E501
    # deposit missing
    Template("deposit", "I deposited a check[ for {amount}|] from [{merchant}|my employer][ on {date}|] into my [{account}|account] and it's still not there.", BANK, PAY, "large"),  # noqa: E501
    Template("deposit", "My paycheck[ ({amount})|] from [{merchant}|work] was supposed to land in my [{account}|account] [on {date}|this week]. Nothing yet.", BANK, PAY, "large"),  # noqa: E501
    Template("deposit", "Mobile deposit missing: [a check from {merchant}|a check], [amount {amount},|] deposited [on {date}|last week] to my [{account}|account]. Where did it go?", BANK, PAY, "large"),  # noqa: E501
    Template("deposit", "[{merchant}|My client] paid me[ {amount}|] by direct deposit[ on {date}|] but it never showed up in my [{account}|account]", BANK, PAY, "large"),  # noqa: E501
    # pending hold
    Template("hold", "[{merchant}|The hotel] put a hold[ of {amount}|] on my [{account}|card][ on {date}|] and it still hasn't been released.", CARDS, tuple(TRAVEL)),  # noqa: E501
    Template("hold", "There's a pending charge[ of {amount}|] from [{merchant}|a gas station][ since {date}|] on my [{account}|account], how long until it drops off?"),  # noqa: E501
    # wrong amount
    Template("wrong_amount", "[{merchant}|The restaurant] charged [{amount}|the wrong amount] to my [{account}|card][ on {date}|] instead of what was on the receipt."),  # noqa: E501
    Template("wrong_amount", "I agreed a lower price with [{merchant}|the seller], but [{amount}|a bigger amount] came out of my [{account}|account][ on {date}|]. Can you fix this?"),  # noqa: E501
    # lost or stolen card
    Template("lost_card", "I lost my [{account}|card][ on {date}|] and someone already spent [{amount}|money] at [{merchant}|a store]. Please freeze it now.", CARDS),  # noqa: E501
    Template("lost_card", "My wallet was stolen[ on {date}|]. There's a purchase[ of {amount}|] at [{merchant}|some shop] on my [{account}|card] that wasn't me.", CARDS),  # noqa: E501
    # dispute follow-up
    Template("follow_up", "Any update on my dispute with [{merchant}|the merchant]? It was for [{amount}|a charge][ on {date}|] on my [{account}|account]."),  # noqa: E501
    Template("follow_up", "Following up on my claim against [{merchant}|a merchant]. [The charge was {amount}. |][It posted on {date}. |][It was on my {account}. |]I haven't heard back in two weeks."),  # noqa: E501
    Template("dispute", "I am writing because I am quite frustrated. [On {date}, I|I] made a purchase at [{merchant}|an online store] using my [{account}|card] for [{amount}|what I thought was the right price]. The item never arrived, the seller stopped answering my emails, and I would like to know how to get the money back.", SPEND, RETAIL),  # noqa: E501
    # currency conversion
    Template("conversion", "I paid [{amount}|in another currency] at [{merchant}|a shop abroad][ on {date}|] with my [{account}|card], but the amount you converted looks way too high.", CARDS),  # noqa: E501
    # partial refund
    Template("partial_refund", "[{merchant}|The airline] only refunded part of my booking. I paid [{amount}|the full fare] with my [{account}|card][ on {date}|] and want the rest back.", CARDS, tuple(TRAVEL), "large"),  # noqa: E501
    # bill payment
    Template("bill_pay", "My bill payment to [{merchant}|the utility company][ of {amount}|] was scheduled[ for {date}|] from my [{account}|account] but it was never sent.", BANK, tuple(PAYEES)),  # noqa: E501
]  # fmt: skip

OPTIONAL = re.compile(r"\[([^\[\]|]*)\|([^\[\]]*)\]")

# --- filler ----------------------------------------------------------------------------------

GREETINGS = ["Hi,", "Hello,", "Hey there,", "Good morning,", "Hi team -", "Dear Support,", "hey"]
SIGN_OFFS = [
    "Thanks.", "Thanks, Priya", "Regards, Tom", "Please help!", "Cheers", "thx",
    "Thank you, Mrs. Adeyemi", "Best, Jonas", "Appreciate it.", "- Carla",
]  # fmt: skip
CURRENCY_ONLY = {
    "USD": ["It was in dollars, I don't remember the exact amount.", "It was a dollar amount."],
    "EUR": ["It was in euros, not sure how much exactly.", "The money was in euros."],
    "GBP": ["It was in pounds, I can't recall the figure.", "The amount was in pounds."],
}
MONTHS = [
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
]  # fmt: skip
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]


def noise_sentence(rng: random.Random, account_type: str | None) -> str:
    """An irrelevant number: order number, extension, card or account ending, call count."""
    choices = [
        f"Order #{rng.randint(10000, 999999)}.",
        f"My order number is {rng.randint(10000, 999999)}.",
        f"You can reach me on ext. {rng.randint(100, 999)}.",
        f"Reference {rng.choice('ABCKX')}{rng.randint(1000, 99999)}.",
        f"I've called {rng.randint(2, 5)} times already.",
        f"Case number {rng.randint(100000, 9999999)}.",
        f"I've banked with you for {rng.randint(3, 25)} years.",
    ]
    if account_type in CARDS:
        choices.append(f"The card ends in {rng.randint(1000, 9999)}.")
    if account_type in BANK:
        choices.append(f"Account ending {rng.randint(1000, 9999)}.")
    return rng.choice(choices)


# --- field values and their surface forms ----------------------------------------------------


def draw_amount(rng: random.Random, kind: str) -> float:
    if kind == "atm":
        return float(rng.choice([20, 40, 60, 80, 100, 120, 200, 250, 300, 400, 500]))
    if kind == "subscription":
        return rng.choice([4.99, 7.99, 9.99, 12.99, 14.99, 19.99, 24.99, 29.0, 39.99, 59.0])
    if kind == "fee":
        return rng.choice([2.5, 3.0, 5.0, 7.5, 12.0, 15.0, 25.0, 29.0, 35.0, 39.0])
    if kind == "large":
        return rng.choice([round(rng.uniform(150, 4800), 2), float(rng.randint(2, 48) * 50)])
    low, high = rng.choice([(2, 60), (60, 400), (400, 2500)])
    whole = rng.random() < 0.35
    return float(rng.randint(low, high)) if whole else round(rng.uniform(low, high), 2)


def number_text(value: float, rng: random.Random) -> str:
    """42.5 -> '42.50'; 1200 -> '1,200', '1200' or '1,200.00'."""
    if value != int(value):
        return f"{value:,.2f}" if rng.random() < 0.7 else f"{value:.2f}"
    style = rng.choice(["comma", "plain", "cents"])
    if style == "cents":
        return f"{value:,.2f}"
    return f"{int(value):,}" if style == "comma" else str(int(value))


def amount_text(value: float, currency: str | None, rng: random.Random) -> str:
    number = number_text(value, rng)
    forms = {
        None: ["{n}"],
        "USD": ["${n}", "${n}", "{n} dollars", "USD {n}", "{n} USD", "US${n}"],
        "EUR": ["€{n}", "€{n}", "{n} euros", "EUR {n}", "{n} EUR", "{n}€"],
        "GBP": ["£{n}", "£{n}", "{n} pounds", "GBP {n}", "{n} GBP"],
    }[currency]
    return rng.choice(forms).format(n=number)


def ordinal(day: int) -> str:
    suffix = "th" if 11 <= day % 100 <= 13 else {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{suffix}"


def date_text(date: datetime.date, rng: random.Random) -> str:
    """An absolute 2026 date in one of several forms; numeric D/M forms only when day > 12."""
    month, day = MONTHS[date.month - 1], date.day
    forms = [
        f"{month} {day}",
        f"{month[:3]} {day}",
        f"{month} {ordinal(day)}",
        f"{day} {month}",
        f"the {ordinal(day)} of {month}",
        date.isoformat(),
        f"{month} {day}, 2026",
        f"{WEEKDAYS[date.weekday()]}, {month} {day}",
    ]
    if day > 12:
        forms += [
            f"{date.month}/{day}",
            f"{day}/{date.month}/2026",
            f"{day:02}.{date.month:02}.2026",
        ]
    return rng.choice(forms)


def draw_date(rng: random.Random) -> datetime.date:
    return datetime.date(2026, 1, 1) + datetime.timedelta(days=rng.randint(0, 364))


def gold_number(value: float) -> float | int:
    return int(value) if value == int(value) else value


# --- rendering -------------------------------------------------------------------------------


def choose_dropped(rng: random.Random) -> set[str]:
    """About a quarter of rows lose one to three fields."""
    if rng.random() < 0.75:
        return set()
    k = rng.choices([1, 2, 3], weights=[0.6, 0.3, 0.1])[0]
    return set(rng.sample(["amount", "currency", "date", "account", "merchant"], k))


def fill_optional(text: str, dropped: set[str]) -> str:
    def pick(match: re.Match) -> str:
        with_slot, fallback = match.group(1), match.group(2)
        slot = re.search(r"\{(\w+)\}", with_slot).group(1)
        return fallback if slot in dropped else with_slot

    return OPTIONAL.sub(pick, text)


def add_typo(text: str, rng: random.Random) -> str:
    """Swap or drop a letter in one template word (never inside a slot)."""
    words = [m for m in re.finditer(r"\{\w+\}|[A-Za-z]{5,}", text) if not m.group().startswith("{")]
    if not words:
        return text
    m = rng.choice(words)
    word, i = m.group(), rng.randint(1, len(m.group()) - 2)
    if rng.random() < 0.5:
        typo = word[:i] + word[i + 1] + word[i] + word[i + 2 :]
    else:
        typo = word[:i] + word[i + 1 :]
    return text[: m.start()] + typo + text[m.end() :]


def end_sentence(text: str) -> str:
    return text if text.rstrip()[-1] in ".!?" else text.rstrip() + "."


def tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r" ([.,!?:)])", r"\1", text)
    return text.replace("..", ".")


def render(template: Template, rng: random.Random) -> tuple[str, dict]:
    dropped = choose_dropped(rng)
    text = fill_optional(template.text, dropped)
    for _ in range(rng.choice([0, 0, 0, 0, 1, 2])):
        text = add_typo(text, rng)

    value = draw_amount(rng, template.amount_kind)
    currency = rng.choices(["USD", "EUR", "GBP"], weights=[0.6, 0.2, 0.2])[0]
    date = draw_date(rng)
    account_type = rng.choice(template.accounts)
    merchant = rng.choice(template.merchants)

    has = {slot: "{" + slot + "}" in text for slot in SLOTS}
    if has["amount"] and "currency" in dropped:
        currency = None
    text = text.format(
        amount=amount_text(value, currency, rng),
        date=date_text(date, rng),
        account=rng.choice(ACCOUNT_WORDS[account_type]),
        merchant=merchant,
    )
    if not has["amount"] and "currency" not in dropped:
        text = end_sentence(text) + " " + rng.choice(CURRENCY_ONLY[currency])
    elif not has["amount"]:
        currency = None

    gold = {
        "amount": gold_number(value) if has["amount"] else None,
        "currency": currency,
        "date": date.isoformat() if has["date"] else None,
        "account_type": account_type if has["account"] else None,
        "merchant": merchant if has["merchant"] else None,
    }
    return decorate(text, gold, rng)


def decorate(text: str, gold: dict, rng: random.Random) -> tuple[str, dict]:
    """Greeting, sign-off, irrelevant number and casing; gold merchant follows the casing."""
    before, after = [], []
    if rng.random() < 0.35:
        rng.choice([before, after]).append(noise_sentence(rng, gold["account_type"]))
    if rng.random() < 0.4:
        before.insert(0, rng.choice(GREETINGS))
    if rng.random() < 0.35:
        after.append(rng.choice(SIGN_OFFS))
    parts = [*before, end_sentence(text) if after else text, *after]
    text = tidy(" ".join(parts))

    casing = rng.choices(["as is", "lower", "upper"], weights=[0.86, 0.11, 0.03])[0]
    if casing != "as is":
        change = str.lower if casing == "lower" else str.upper
        text = change(text)
        if gold["merchant"] is not None:
            gold["merchant"] = change(gold["merchant"])
    return text, gold


# --- main ------------------------------------------------------------------------------------


def check_templates() -> None:
    for template in TEMPLATES:
        for slot in SLOTS:
            count = template.text.count("{" + slot + "}")
            assert count == 1, f"{slot} appears {count} times in: {template.text}"


def make_rows(rng: random.Random) -> list[dict]:
    rows, seen = [], set()
    order = []
    while len(rows) < N_ROWS:
        if not order:
            order = rng.sample(TEMPLATES, len(TEMPLATES))
        text, gold = render(order.pop(), rng)
        if text in seen or not MIN_WORDS <= len(text.split()) <= MAX_WORDS:
            continue
        seen.add(text)
        rows.append({"id": f"ex-{len(rows) + 1:04d}", "text": text, "gold": gold})
    return rows


def main() -> None:
    check_templates()
    rows = make_rows(random.Random(0))
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    with OUTPUT.open("w", encoding="utf-8") as out:
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"wrote {len(rows)} rows to {OUTPUT}")
    print(f"templates: {len(TEMPLATES)}")
    print(f"rows with any null: {sum(None in row['gold'].values() for row in rows)}")
    for field in FIELDS:
        print(f"  {field} null: {sum(row['gold'][field] is None for row in rows)}")


if __name__ == "__main__":
    main()
