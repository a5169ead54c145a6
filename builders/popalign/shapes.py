"""The shapes popalign asks a model to answer in where it reads the answer, not trains on it: a rater's 1-to-10
rating (best-of-N), a judge's explanation and letter, the paper's elicitive thought and response. Each is a JSON
schema; a backend that can constrain its answer to it does (llama.cpp in process through its grammar sampler,
OpenAI-compatible servers through `response_format`), and `Shape.read` turns an answer in the shape back into the
text the free-text parsers read, so an answer from a backend that cannot constrain (or a server that refused the
shape) goes through the same parser as before and is counted apart."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Shape:
    """A JSON object an answer is asked to be: its `name`, its schema (as JSON text, so a request stays hashable),
    and how its fields read as free text (`text`, a format string over them)."""

    name: str
    schema_text: str
    text: str

    @functools.cached_property
    def schema(self) -> dict[str, Any]:
        """The schema, parsed once."""
        return json.loads(self.schema_text)

    def response_format(self) -> dict[str, Any]:
        """The OpenAI `response_format` that asks for this shape (vLLM, SGLang, llama.cpp's server take it too)."""
        return {"type": "json_schema", "json_schema": {"name": self.name, "schema": self.schema, "strict": True}}

    def read(self, answer: str) -> str | None:
        """The answer as the free text its parser reads, where it is a JSON object with this shape's fields; None
        where it is not (the backend did not constrain it).

        >>> RATING.read('{"rating": 7}'), RATING.read("Rating: 7")
        ('7', None)
        >>> print(VERDICT.read('{"explanation": "Clearer.", "better": "B"}'))
        Clearer.
        B
        """
        try:
            value = json.loads(answer)
        except ValueError:
            return None
        fields = self.schema["required"]
        if not isinstance(value, dict) or any(name not in value for name in fields):
            return None
        return self.text.format(**{name: str(value[name]).strip() for name in fields})


def _shape(name: str, properties: dict[str, Any], text: str) -> Shape:
    schema = {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}
    return Shape(name, json.dumps(schema), text)  # in the fields' order: a judge explains before it picks


#: A rater's rating: a whole number from 1 to 10.
RATING = _shape("rating", {"rating": {"type": "integer", "enum": list(range(1, 11))}}, "{rating}")
#: A pairwise judge's reply: a short explanation, then the letter of the better answer.
VERDICT = _shape(
    "verdict",
    {"explanation": {"type": "string", "maxLength": 400}, "better": {"type": "string", "enum": ["A", "B"]}},
    "{explanation}\n{better}",
)
#: The paper's single-turn elicitive output: the thought, then the response.
THOUGHT = _shape(
    "thought",
    {"thought": {"type": "string"}, "response": {"type": "string"}},
    "Thought: {thought}\nResponse: {response}",
)
