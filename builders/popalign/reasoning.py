"""Reasoning traces kept apart from answers. A thinking model's trace reaches popalign in one of two ways: in a
field of its own (`reasoning_content` on SGLang, llama.cpp's server and DeepSeek's API; `reasoning` on vLLM and
OpenRouter), or inside the answer text as a leading think block (`<think>…</think>`: vLLM or SGLang without a
reasoning parser, llama.cpp with `--reasoning-format none`, TGI, a local model). `separate` turns either into a
generation whose text is the answer alone and whose `reasoning` is the trace, and marks one that ended while still
thinking; every check that reads an answer reads that text. `inline` writes a trace back into an answer the way
chat templates of thinking models (Qwen3, DeepSeek-R1) render an assistant turn, for `--thinking inline`."""

from __future__ import annotations

from dataclasses import replace

from popalign.generation import LENGTH, THINKING, Generation
from popalign.styles import THINK_TAGS


def split_trace(text: str, tags: tuple[str, str] = THINK_TAGS) -> tuple[str, str, bool]:
    """The (answer, trace, unfinished) of a text that may begin with a think block: a block opened at the start
    and closed; a closing tag with no opening one (templates such as DeepSeek-R1's open the block in the prompt);
    or a block opened and never closed (`unfinished`: the text is all trace, there is no answer). An answer that
    writes the closing tag with no opening one before it is read as the second kind: a model without a think
    block rarely writes one.

    >>> split_trace("<think>Sum it.</think>\\n\\n4"), split_trace("Sum it.\\n</think>4"), split_trace("4")
    (('4', 'Sum it.', False), ('4', 'Sum it.', False), ('4', '', False))
    >>> split_trace("  <think>Let me see, 2 and")
    ('', 'Let me see, 2 and', True)
    """
    opening, closing = tags
    stripped = text.lstrip()
    if stripped.startswith(opening):
        body = stripped[len(opening) :]
        trace, found, answer = body.partition(closing)
        if not found:
            return "", body.strip(), True
        return answer.strip(), trace.strip(), False
    trace, found, answer = text.partition(closing)
    if found and opening not in trace:
        return answer.strip(), trace.strip(), False
    return text, "", False


def separate(generation: Generation, tags: tuple[str, str] = THINK_TAGS) -> Generation:
    """A generation with its trace taken out of the text (and joined to any the server gave apart), and finish
    reason `thinking` where it ended while still thinking: a think block never closed, or the token limit reached
    with a trace and no answer (a server that splits the trace returns an empty answer then, and
    `finish_reason: length`).

    >>> separate(Generation("<think>hm</think>Blue.", 9)).text, separate(Generation("", 64, "length", 0, "hm"))
    ('Blue.', Generation(text='', tokens=64, finish_reason='thinking', prompt_tokens=0, reasoning='hm', \
reasoning_tokens=0))
    """
    answer, trace, unfinished = split_trace(generation.text, tags)
    joined = "\n\n".join(part for part in (generation.reasoning.strip(), trace) if part)
    thinking = bool(joined) or generation.reasoning_tokens > 0
    if unfinished or (generation.finish_reason == LENGTH and thinking and not answer.strip()):
        return replace(generation, text="", reasoning=joined, finish_reason=THINKING)
    if answer == generation.text and joined == generation.reasoning:
        return generation
    return replace(generation, text=answer, reasoning=joined)


def inline(answer: str, trace: str | None, tags: tuple[str, str] = THINK_TAGS) -> str:
    """An answer with its trace before it, as thinking models' chat templates write an assistant turn (and read it
    back: Qwen3's and DeepSeek-R1's split the content at the closing tag); the answer alone where there is none.

    >>> inline("4", "Sum it."), inline("4", None)
    ('<think>\\nSum it.\\n</think>\\n\\n4', '4')
    """
    if not trace:
        return answer
    return f"{tags[0]}\n{trace}\n{tags[1]}\n\n{answer}"
