"""Conversations as popalign reads them: the turns before the one to answer, in one of the common chat-dataset
shapes, checked. A prompt is plain text (one user turn), a `messages` list of `{role, content}` (TRL's and
UltraChat's), ShareGPT's `conversations` list of `{from, value}`, or an HH-RLHF transcript
(`\\n\\nHuman: … \\n\\nAssistant: …`, of which the dialogue up to the last `Assistant:` is the one to answer).

A conversation is an optional system turn, then user and assistant turns in turn, ending in the user turn to answer.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

#: One chat message as (role, content); tuples keep requests hashable.
Message = tuple[str, str]

ROLES = ("system", "user", "assistant")
#: ShareGPT's speaker names (and the role names some exports use instead).
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
#: Columns holding an answered conversation (a preference dataset's): its last assistant turn is the old answer,
#: left out, as HH-RLHF's text after its last `Assistant:` is.
ANSWERED_COLUMNS = ("chosen", "rejected")
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class ConversationError(ValueError):
    """A prompt that is no well-formed conversation; the message says what is wrong, without the row."""


def is_transcript(text: str) -> bool:
    """Whether text is an HH-RLHF transcript: it opens with `Human:` and has an `Assistant:` turn.

    >>> is_transcript("\\n\\nHuman: Hi\\n\\nAssistant: Hello"), is_transcript("Human: be brief")
    (True, False)
    """
    return text.lstrip().startswith("Human:") and "\n\nAssistant:" in text


def from_transcript(text: str) -> tuple[Message, ...]:
    """The dialogue of an HH-RLHF transcript up to its last `Assistant:` (what follows is the old answer).

    >>> from_transcript("\\n\\nHuman: Hi\\n\\nAssistant: Hello!\\n\\nHuman: How are you?\\n\\nAssistant: Fine.")
    (('user', 'Hi'), ('assistant', 'Hello!'), ('user', 'How are you?'))
    """
    head = "\n\n" + text.lstrip()[: text.lstrip().rindex("\n\nAssistant:")]
    parts = _HH_TURN.split(head)[1:]
    turns = zip(parts[::2], parts[1::2], strict=True)
    return tuple((_HH_ROLES[speaker], content.strip()) for speaker, content in turns)


def parse(value: object, *, answered: bool = False) -> tuple[Message, ...]:
    """The conversation a prompt field holds (see the module), checked; `answered`: a final assistant turn is the
    old answer and is left out.

    >>> parse([{"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"}])
    (('system', 'Be brief.'), ('user', 'Hi'))

    Raises:
        ConversationError: the value is no conversation, or one that is malformed (`check`).
    """
    if isinstance(value, str):
        turns = from_transcript(value) if is_transcript(value) else (("user", value),)
    elif isinstance(value, (list, tuple)) and value:
        turns = tuple(_turn(item, number) for number, item in enumerate(value, start=1))
        if answered and turns[-1][0] == "assistant":
            turns = turns[:-1]
    elif isinstance(value, (list, tuple)):
        raise ConversationError("is an empty conversation")
    else:
        raise ConversationError(f"is {type(value).__name__}, expected text or a list of turns")
    check(turns)
    return turns


def _turn(item: object, number: int) -> Message:
    """One turn of a `messages` (`role`, `content`) or ShareGPT (`from`, `value`) list."""
    if isinstance(item, dict) and "role" in item and "content" in item:
        role, content, roles = item["role"], item["content"], {role: role for role in ROLES}
    elif isinstance(item, dict) and "from" in item and "value" in item:
        role, content, roles = item["from"], item["value"], SHAREGPT_ROLES
    else:
        raise ConversationError(f"turn {number} is not a {{role, content}} or {{from, value}} object")
    if not isinstance(role, str) or role.lower() not in roles:
        raise ConversationError(f"turn {number} has role {role!r} (expected one of {', '.join(roles)})")
    if not isinstance(content, str):
        raise ConversationError(f"turn {number} is {type(content).__name__}, expected text")
    return roles[role.lower()], content


def check(turns: Sequence[Message]) -> None:
    """Refuse a conversation that is not an optional system turn, then user and assistant turns in turn ending in a
    user turn, each with text.

    >>> check([("user", "Hi"), ("user", "Hello?")])
    Traceback (most recent call last):
    ...
    popalign.conversations.ConversationError: turn 2 is a user turn after a user turn (turns alternate)
    """
    start = 1 if turns and turns[0][0] == "system" else 0
    if start == len(turns):
        raise ConversationError("has no user turn")
    for number, (role, content) in enumerate(turns, start=1):
        if not content.strip():
            raise ConversationError(f"turn {number} ({role}) is empty")
        expected = "user" if (number - 1 - start) % 2 == 0 else "assistant"
        if number - 1 >= start and role != expected:
            after = turns[number - 2][0] if number > 1 else ""
            where = f"after {'an' if after == 'assistant' else 'a'} {after} turn" if after else "first"
            why = "a system turn comes first only" if role == "system" else "turns alternate"
            raise ConversationError(f"turn {number} is a {role} turn {where} ({why})")
    if turns[-1][0] != "user":
        raise ConversationError("ends in an assistant turn: the last turn is the user's, to answer")


def from_chat(chat: Sequence[dict[str, str]]) -> tuple[Message, ...]:
    """A chat in the `[{role, content}]` form rows and APIs hold, as messages.

    >>> from_chat([{"role": "user", "content": "Hi"}])
    (('user', 'Hi'),)
    """
    return tuple((turn["role"], turn["content"]) for turn in chat)


def as_chat(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Messages in the `[{role, content}]` form chat templates, APIs and rows take."""
    return [{"role": role, "content": content} for role, content in messages]


def with_system(turns: Sequence[Message], text: str) -> tuple[Message, ...]:
    """A conversation under a system message of `text`: one system turn, `text` first, then its own one.

    >>> with_system([("system", "Be brief."), ("user", "Hi")], "Be kind.")
    (('system', 'Be kind.\\n\\nBe brief.'), ('user', 'Hi'))
    """
    if turns and turns[0][0] == "system":
        return (("system", f"{text}\n\n{turns[0][1]}"), *turns[1:])
    return (("system", text), *turns)


def transcript(turns: Sequence[Message]) -> str:
    """A conversation as one text, each turn after its speaker (`User:`, `Assistant:`, `System:`); one user turn is
    its own text.

    >>> transcript([("user", "Hi")]), transcript([("user", "Hi"), ("assistant", "Hello"), ("user", "Bye")])
    ('Hi', 'User: Hi\\n\\nAssistant: Hello\\n\\nUser: Bye')
    """
    if len(turns) == 1 and turns[0][0] == "user":
        return turns[0][1]
    return "\n\n".join(f"{role.capitalize()}: {content}" for role, content in turns)
