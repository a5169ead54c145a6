"""`popalign review` as a person uses it, in a real browser (Debian's chromium under chromedriver, driven by
selenium): move through pairs by keyboard, flag them, and see the flags saved, the card's review table, and
`push --flags apply` publish the build without the bad pair and with the swapped one turned."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet
import pytest

from helpers import POPALIGN, build, run_offline
from hub_server import serve_hub
from popalign.dataset.flags import read_flags

pytestmark = pytest.mark.slow
TOKEN = "hf_testsecret_review"
REPO = "org/reviewed"


def chromium():
    """A headless Chromium under Debian's chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail("chromedriver is missing: apt-get install chromium chromium-driver (CI installs them)")
    options = Options()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service(driver_path), options=options)


@contextmanager
def reviewing(folder: Path, *flags: str) -> Iterator[str]:
    """`popalign review FOLDER` running; its printed URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [str(POPALIGN), "review", str(folder), "--port", "0", *flags]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        line = server.stdout.readline() if server.stdout else ""
        assert "http://" in line, line + (server.stdout.read() if server.stdout else "")
        yield line[line.index("http://") :].strip()
    finally:
        server.terminate()
        server.wait(timeout=30)


def git_show(repo: Path, path: str) -> str:
    """A file of the published repository's newest commit, as git holds it."""
    return subprocess.run(
        ["git", "-C", repo, "show", f"HEAD:{path}"], capture_output=True, text=True, check=True
    ).stdout


def keys(driver, text: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(text).perform()


def wait_for(driver, element: str, text: str) -> None:
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 20).until(expected_conditions.text_to_be_present_in_element(("id", element), text))


@pytest.fixture
def built(scripted, tmp_path: Path) -> Path:
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix,elicitive")
    assert result.returncode == 0, result.stderr
    return out


def test_a_reader_flags_pairs_by_keyboard_and_push_applies_the_flags(built: Path, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    pairs = json.loads((built / "popalign_build.json").read_text())["configs"]["prefix"]["rows"]
    driver = chromium()
    try:
        with reviewing(built, "--reader", "ana") as url:
            driver.get(url)
            Select(driver.find_element("id", "strategy")).select_by_value("prefix")
            wait_for(driver, "position", f"1 / {pairs}")
            assert driver.find_element("id", "chosen").text and driver.find_element("id", "rejected").text
            assert driver.find_elements("css selector", "#chosen .changed"), "the sides' differences are marked"
            keys(driver, "j")
            wait_for(driver, "position", f"2 / {pairs}")
            bad_id = driver.find_element("id", "pair-id").text
            keys(driver, "b")
            wait_for(driver, "status", "saved: bad")
            keys(driver, "js")
            wait_for(driver, "status", "saved: swapped")
            swapped_id = driver.find_element("id", "pair-id").text
            keys(driver, "n")
            keys(driver, "both answers are fine, the rejected one is clearer")
            ActionChains(driver).key_down(Keys.CONTROL).send_keys(Keys.ENTER).key_up(Keys.CONTROL).perform()
            wait_for(driver, "pair-flags", "the rejected one is clearer")
            Select(driver.find_element("id", "flag")).select_by_value("bad")
            wait_for(driver, "position", "1 / 1")
            assert driver.find_element("id", "pair-id").text == bad_id
            screenshot = Path(os.environ.get("POPALIGN_REVIEW_SCREENSHOT", tmp_path / "review.png"))
            Select(driver.find_element("id", "flag")).select_by_value("")
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()

    flags = json.loads((built / "review_flags.json").read_text())["flags"]
    marks = {(flag["prompt_id"][:12], flag["mark"], flag["note"]) for flag in flags}
    assert marks == {(bad_id, "bad", ""), (swapped_id, "swapped", "both answers are fine, the rejected one is clearer")}
    card = (built / "README.md").read_text()
    assert "## Read by people" in card and "1 reader (`ana`)" in card
    assert "| `prefix` | 2 | 0 | 1 | 1 | 0% |" in card

    rows = {row["prompt_id"][:12]: row for row in pyarrow.parquet.read_table(built / "data" / "prefix").to_pylist()}
    with serve_hub(tmp_path / "hub", TOKEN) as hub:
        env = {"HF_ENDPOINT": hub, "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0", "HF_HOME": str(tmp_path / "hf")}
        pushed = run_offline(POPALIGN, "push", built, "--repo", REPO, "--release", "1.0.0", "--token", TOKEN,
                             "--flags", "apply", **env)  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr
    repo = tmp_path / "hub" / "datasets" / REPO
    pointer = git_show(repo, "data/prefix/train-00000-of-00001.parquet")  # the Hub keeps Parquet in LFS
    oid = pointer.split("oid sha256:")[1].split()[0]
    table = pyarrow.parquet.read_table(repo / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid)
    published = {row["prompt_id"][:12]: row for row in table.to_pylist()}
    assert bad_id not in published and len(published) == pairs - 1
    assert published[swapped_id]["chosen"] == rows[swapped_id]["rejected"] and published[swapped_id]["swapped"]
    pushed_card = git_show(repo, "README.md")
    assert "published with the flags applied (`--flags apply`):\n1 pairs flagged bad were left out" in pushed_card
    manifest = json.loads(git_show(repo, "popalign_build.json"))
    assert manifest["configs"]["prefix"]["dropped"]["flagged-bad"] == 1
    assert manifest["review"]["applied"] == {"left_out": 1, "swapped": 1}
    assert (built / "data" / "prefix").is_dir() and len(rows) == pairs  # the folder itself is untouched


def test_the_shared_page_is_read_only_and_fetches_nothing(built: Path, tmp_path: Path) -> None:
    page = tmp_path / "review.html"
    result = run_offline(POPALIGN, "review", built, "--html", page)
    assert result.returncode == 0, result.stderr
    driver = chromium()
    try:
        driver.get(page.as_uri())
        wait_for(driver, "position", "1 / ")
        keys(driver, "jb")
        wait_for(driver, "position", "2 / ")
        assert not driver.find_element("id", "mark-bad").is_displayed()
        assert driver.execute_script("return performance.getEntriesByType('resource').length") == 0
    finally:
        driver.quit()
    assert not (built / "review_flags.json").exists()


def test_a_page_bound_beyond_this_machine_asks_for_its_token(built: Path) -> None:
    with reviewing(built, "--host", "0.0.0.0") as url:
        assert "?token=" in url
        bare = url.split("?")[0]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(bare, timeout=10)
        assert refused.value.code == 403
        flag = urllib.request.Request(bare + "api/flag", data=b"{}", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(flag, timeout=10)
        assert refused.value.code == 403
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"review-data" in response.read()


def test_a_tampered_flags_file_stops_review_and_push_in_one_line(built: Path) -> None:
    (built / "review_flags.json").write_text(json.dumps({"format": 1, "flags": [], "sha256": "0" * 64}))
    for command in (["review", built, "--html", built.parent / "page.html"], ["push", built, "--repo", REPO,
                                                                              "--release", "1.0.0"]):  # fmt: skip
        result = run_offline(POPALIGN, *command)
        assert result.returncode == 2 and len(result.stderr.splitlines()) == 1, result.stderr
        assert "review_flags.json: its content is not what popalign wrote" in result.stderr


def test_flags_survive_a_judge_pass_and_a_rebuild_of_the_same_pairs_and_go_stale_where_answers_change(
    scripted, built: Path, tmp_path: Path
) -> None:
    """The flags file is carried into every rewrite of the folder: a judge pass keeps the pairs, so the flags hold
    and the card sets them beside the judge; a rebuild with another prefix style changes every prefix answer, so
    the prefix flag turns stale and counts nowhere, while the elicitive one, on the same pair, holds."""
    from popalign.dataset.flags import Flag, Flags, pair_digest, write_flags

    prefix = pyarrow.parquet.read_table(built / "data" / "prefix").to_pylist()[0]
    elicitive = pyarrow.parquet.read_table(built / "data" / "elicitive").to_pylist()[0]
    flags = [Flag("ana", "prefix", prefix["prompt_id"], pair_digest(prefix), "swapped"),
             Flag("bo", "elicitive", elicitive["prompt_id"], pair_digest(elicitive), "good")]  # fmt: skip
    write_flags(built, Flags(flags))
    judged = run_offline(POPALIGN, "judge", built, "--judge-model", scripted[0], "--no-cache", "--no-progress",
                         HF_HUB_OFFLINE="0")  # fmt: skip
    assert judged.returncode == 0, judged.stderr
    assert Flags(sorted(flags, key=lambda f: f.key)) == read_flags(built)
    manifest = json.loads((built / "popalign_build.json").read_text())
    review = manifest["review"]
    assert review["readers"] == ["ana", "bo"] and review["stale"] == 0
    assert review["configs"]["elicitive"]["judge_agrees"] == [1, 1]  # the scripted judge prefers the careful answer
    assert review["configs"]["prefix"]["judge_agrees"] == [0, 0]  # and calls prefix pairs a tie: nothing to compare
    assert (
        "| `elicitive` | 1 | 1 | 0 | 0 | 100% | 21–100% | 100% | 91.5% | - | 1 of 1 (21–100%) |"
        in (built / "README.md").read_text()
    )
    result, out = build(tmp_path, scripted[0], "--strategies", "prefix,elicitive", "--prefix-style", "helpful")
    assert result.returncode == 0 and out == built, result.stderr
    manifest = json.loads((built / "popalign_build.json").read_text())
    assert manifest["review"]["stale"] == 1 and list(manifest["review"]["configs"]) == ["elicitive"]
    assert "1 flags were given on pairs a\nrebuild has since changed" in (built / "README.md").read_text()


def test_the_server_follows_a_rebuild_and_refuses_a_flag_on_answers_that_changed(scripted, built: Path) -> None:
    """A rebuild while the page is open: a flag given on a prefix pair as it was read is refused in one line (its
    answers changed), one on an elicitive pair, unchanged, is saved against the new build."""

    def post(url: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(url + "api/flag", data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    with reviewing(built, "--reader", "ana") as url:
        with urllib.request.urlopen(url, timeout=30) as response:
            page = response.read().decode()
        start = page.index('type="application/json">') + len('type="application/json">')
        pairs = json.loads(page[start : page.index("</script>", start)])["pairs"]
        prefix, elicitive = (next(p for p in pairs if p["config"] == name) for name in ("prefix", "elicitive"))
        result, _ = build(built.parent, scripted[0], "--strategies", "prefix,elicitive", "--prefix-style", "helpful")
        assert result.returncode == 0, result.stderr
        status, answer = post(url, {k: prefix[k] for k in ("config", "prompt_id", "pair")} | {"mark": "bad"})
        assert status == 409 and "the pair changed since the page was loaded; reload it" in answer["error"]
        status, answer = post(url, {k: elicitive[k] for k in ("config", "prompt_id", "pair")} | {"mark": "good"})
        assert status == 200 and answer["flags"] == [{"reader": "ana", "mark": "good", "note": "", "stale": False}]
    assert [flag["mark"] for flag in json.loads((built / "review_flags.json").read_text())["flags"]] == ["good"]


def test_a_port_in_use_stops_review_in_one_line(built: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = run_offline(POPALIGN, "review", built, "--port", port)
    assert result.returncode == 2 and result.stderr == (
        f"popalign: error: --port {port}: cannot listen on 127.0.0.1 (in use); pick another with --port\n"
    )
