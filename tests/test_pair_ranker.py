"""The pairwise ranker judge (PairRM's architecture): its verdicts and margins equal a direct, unbatched
computation of the same network, in both orders, and the card compares it with the paper's PairRM column."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from helpers import POPALIGN, build, load, manifest, run_offline
from popalign.backends.pair_ranker import PREFIXES, PairRanker, PairRankerModel
from popalign.contrasts import STRATEGIES
from popalign.errors import BackendError
from popalign.judging import verdict
from popalign.roles import ModelSpec


def direct_logit(folder: Path, instruction: str, first: str, second: str) -> float:
    """The ranker's logit for one (instruction, A, B), unbatched: the three prefixed segments in one sequence, then
    the head over the source's and each answer's prefix encodings."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = PairRankerModel.from_pretrained(folder).eval()
    source, one, two = PREFIXES.values()
    ids = [
        token for text in (source + instruction, one + first, two + second) for token in tokenizer(text)["input_ids"]
    ]
    with torch.inference_mode():
        states = model.pretrained_model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        at = {token: states[ids.index(tokenizer.convert_tokens_to_ids(token))] for token in PREFIXES.values()}
        left = model.head_layer(torch.cat([at[source], at[one]]))
        right = model.head_layer(torch.cat([at[source], at[two]]))
    return (left - right).mean().item()


@pytest.mark.slow
def test_a_pairrm_judge_gives_the_verdicts_of_a_direct_computation(scripted, tiny_pair_ranker_dir, tmp_path) -> None:
    url, _ = scripted
    strategies = "prefix,demon,elicitive,refine"  # the ones the scripted server serves with one role
    result, out = build(
        tmp_path, url, "--strategies", strategies, "--keep-truncated", tags=["ok", "tide-two", "tide-three"]
    )
    assert result.returncode == 0, result.stderr
    judged = run_offline(POPALIGN, "judge", out, "--judge-reward-model", tiny_pair_ranker_dir, "--batch-size", "4",
                         "--no-progress")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    record = manifest(out)["judge"]
    assert record["kind"] == "pairwise" and record["model"] == tiny_pair_ranker_dir.name
    seen = set()
    for name in strategies.split(","):
        rows = load(out, name)
        for row in rows:
            q, chosen, rejected = (row[key][0]["content"] for key in ("prompt", "chosen", "rejected"))
            first = direct_logit(tiny_pair_ranker_dir, q, chosen, rejected)
            second = direct_logit(tiny_pair_ranker_dir, q, rejected, chosen)
            letters = ["A" if x > 0 else "B" for x in (first, second)]
            assert row["judge_verdict"] == verdict(*letters)
            assert row["judge_margin"] == pytest.approx(first - second, abs=1e-4)
            seen.add(row["judge_verdict"])
    assert len(seen) > 1, "a random ranker that always agrees tests nothing"
    card = (out / "README.md").read_text()
    assert "the pairwise ranker `tiny-pairrm" in card and "| paper (PairRM) |" in card and "GPT-4" not in card
    for name, figure in STRATEGIES.paper_accuracy("PairRM").items():
        if record["configs"].get(name):
            assert f"| {figure * 100:.1f}% |" in card.split(f"| `{name}` |")[-1].split("\n")[0] + " "


@pytest.mark.slow
def test_a_checkpoint_that_is_not_a_trained_pairrm_is_refused(tiny_pair_ranker_dir, tmp_path: Path) -> None:
    folder = tmp_path / "no-prefixes"
    folder.mkdir()
    for path in tiny_pair_ranker_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"cand2_prefix_id": 0}))  # not the tokenizer's
    with pytest.raises(
        BackendError,
        match=r"not a trained PairRM checkpoint \(its tokenizer's <\|candidate2\|> is not its config's cand2_prefix_id",
    ):
        PairRanker(ModelSpec.parse(str(folder)), batch_size=4)
    assert PairRanker(ModelSpec.parse(str(tiny_pair_ranker_dir)), batch_size=4).kind == "pairwise"
