"""`popalign show` prints untrusted text (Hub prompts, served answers, served model names) without letting it drive
the terminal."""

from __future__ import annotations

import pytest

from popalign.show import format_pair

OSC_TITLE, OVERWRITE = "\x1b]0;owned\x07", "\rfake line"


def test_control_characters_are_shown_escaped_not_sent_to_the_terminal() -> None:
    row = {
        "strategy": "prefix", "prompt_id": "ab" * 32, "prompt": [{"role": "user", "content": f"Say hi{OSC_TITLE}"}],
        "chosen": [{"role": "assistant", "content": f"Hi.{OVERWRITE}\nBye.\tEnd"}],
        "rejected": [{"role": "assistant", "content": "\x1b[31mred\x1b[0m"}],
        "chosen_model": "m\x1b[2J", "rejected_model": "m",
    }  # fmt: skip
    for side_by_side in (False, True):
        shown = format_pair(row, width=100, side_by_side=side_by_side)
        assert not any((ord(char) < 32 and char not in "\n\t") or 0x7F <= ord(char) <= 0x9F for char in shown)
        assert "Say hi\\x1b]0;owned\\x07" in shown and "\\x1b[31mred\\x1b[0m" in shown and "m\\x1b[2J" in shown
    assert "Hi.\\x0dfake line" in format_pair(row, width=100)


@pytest.mark.slow
def test_a_flag_the_command_lacks_is_named_with_the_command_s_own_nearest(popalign, tmp_path) -> None:
    """`show --limit` is not a build setting it should be pointed to: the line suggests from show's own keys, as
    `popalign.pairs` does."""
    for flag, says in (("--limit", "unknown setting 'limit'"),
                       ("--widht", "unknown setting 'widht' (did you mean 'width'?)")):  # fmt: skip
        result = popalign("show", tmp_path, flag, "3")
        assert result.returncode == 2 and result.stderr.strip() == f"popalign: error: {says}", result.stderr
