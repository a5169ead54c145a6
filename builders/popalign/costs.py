"""What a build's requests cost: the tokens in and out of each role's requests, their price per million tokens
(`--price ROLE=IN,OUT`), and the budget that stops a build once this run has spent it (`--budget`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from popalign.dataset.records import ConfigRecord

#: How a budget in money is written: `$5`, `5$`, `5 USD` (any currency: the prices' own unit).
_MONEY = re.compile(r"^\s*(?:\$\s*(?P<a>[0-9.]+)|(?P<b>[0-9.]+)\s*(?:\$|usd|eur|€))\s*$", re.IGNORECASE)


@dataclass
class Tokens:
    """Tokens of some requests: of their prompts (in) and of their answers (out)."""

    prompt: int = 0
    completion: int = 0

    def add(self, prompt: int, completion: int) -> None:
        self.prompt += prompt
        self.completion += completion

    @property
    def total(self) -> int:
        return self.prompt + self.completion


@dataclass(frozen=True)
class Price:
    """What a role's tokens cost, per million tokens in (prompt) and out (answer).

    >>> Price(0.15, 0.6).of(Tokens(prompt=2_000_000, completion=500_000))
    0.6
    """

    input: float
    output: float

    def of(self, tokens: Tokens) -> float:
        return (tokens.prompt * self.input + tokens.completion * self.output) / 1e6

    def __str__(self) -> str:
        return f"{self.input:g},{self.output:g}"


def parse_prices(value: Any) -> dict[str, Price]:
    """Prices by role from `ROLE=IN,OUT` texts (the repeated flag) or a mapping of role to `IN,OUT` or `[IN, OUT]`
    (a recipe, the API); each price a number >= 0 per million tokens.

    >>> parse_prices(["default=0.15,0.6"]), parse_prices({"large": [3, 15]})
    ({'default': Price(input=0.15, output=0.6)}, {'large': Price(input=3.0, output=15.0)})
    """
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list | tuple):
        pairs = [text.partition("=")[::2] for text in value]
        if not all(isinstance(text, str) and "=" in text for text in value):
            raise ValueError("expected ROLE=IN,OUT")
        value = dict(pairs)
    if not isinstance(value, Mapping):
        raise ValueError("expected ROLE=IN,OUT")
    return {str(role).strip(): _price(price) for role, price in value.items()}


def _price(value: Any) -> Price:
    if isinstance(value, Price):
        return value
    parts = value.split(",") if isinstance(value, str) else value
    if not isinstance(parts, list | tuple) or len(parts) != 2 or any(isinstance(part, bool) for part in parts):
        raise ValueError("expected IN,OUT")
    numbers = [float(part) for part in parts]
    if any(not 0 <= number < 1e6 for number in numbers):
        raise ValueError("a price is a number >= 0")
    return Price(*numbers)


@dataclass(frozen=True)
class Budget:
    """How much one run may spend on requests it generates (answers from the cache are free): a number of tokens
    in and out, or an amount of money at the roles' prices (`money`).

    >>> parse_budget("200000"), parse_budget("$2.50")
    (Budget(limit=200000.0, money=False), Budget(limit=2.5, money=True))
    """

    limit: float
    money: bool = False

    def spent(self, by_role: Mapping[str, Tokens], prices: Mapping[str, Price]) -> float:
        """What the tokens by role come to: their sum, or their price."""
        if self.money:
            return sum(prices[role].of(tokens) for role, tokens in by_role.items())
        return float(sum(tokens.total for tokens in by_role.values()))

    def shown(self, amount: float | None = None) -> str:
        """An amount (the limit by default) as the budget counts: `$2.50` or `200,000 tokens`."""
        amount = self.limit if amount is None else amount
        return f"${amount:,.2f}" if self.money else f"{amount:,.0f} tokens"


def parse_budget(value: Any) -> Budget:
    """A budget from a number of tokens (`200000`) or an amount (`$2.50`, `2.5 USD`); it must be above 0."""
    if isinstance(value, Budget):
        return value
    if isinstance(value, bool):
        raise ValueError("expected a number")
    money = _MONEY.match(value) if isinstance(value, str) else None
    limit = float(money["a"] or money["b"]) if money else float(value)
    if not limit > 0:
        raise ValueError("a budget is above 0")
    return Budget(limit, money=bool(money))


def cost(by_role: Mapping[str, Tokens], prices: Mapping[str, Price]) -> float | None:
    """The price of the tokens by role, or None when a role that used tokens has no price."""
    used = {role: tokens for role, tokens in by_role.items() if tokens.total}
    if not prices or any(role not in prices for role in used):
        return None
    return sum(prices[role].of(tokens) for role, tokens in used.items())


def usage_record(
    requests: int, by_role: Mapping[str, Tokens], rows: int, prices: Mapping[str, Price]
) -> dict[str, Any]:
    """A config's cost record: the requests its pairs used and their tokens in and out (however each was answered:
    what making them costs), by role (`usage`: role to [in, out]), per kept pair, and priced where every role used
    has a price.

    >>> usage_record(4, {"default": Tokens(300, 100)}, 2, {"default": Price(1, 2)})["cost_per_pair"]
    0.00025
    """
    total = Tokens(sum(t.prompt for t in by_role.values()), sum(t.completion for t in by_role.values()))
    price = cost(by_role, prices)
    return {
        "requests": requests,
        "tokens": total.completion,
        "prompt_tokens": total.prompt,
        "usage": {role: [tokens.prompt, tokens.completion] for role, tokens in by_role.items() if tokens.total},
        "tokens_per_pair": round(total.total / rows, 1) if rows else None,
        "cost": None if price is None else round(price, 6),
        "cost_per_pair": None if price is None or not rows else round(price / rows, 8),
    }


def merged_usage(records: list[ConfigRecord], rows: int, prices: Mapping[str, Price]) -> dict[str, Any]:
    """The cost record of one config built in parts (shards): their requests and tokens added up."""
    by_role: dict[str, Tokens] = {}
    for record in records:
        for role, (prompt, completion) in (record.usage or {}).items():
            by_role.setdefault(role, Tokens()).add(prompt, completion)
    return usage_record(sum(record.requests or 0 for record in records), by_role, rows, prices)


def recorded_prices(prices: Mapping[str, Price]) -> dict[str, str]:
    """Prices as the manifest records them: role to `IN,OUT` per million tokens."""
    return {role: str(price) for role, price in prices.items()}
