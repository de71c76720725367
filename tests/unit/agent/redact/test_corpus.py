"""Recall and false positives of the built-in rules on the fixture corpus.

``tests/fixtures/redaction/secrets.txt`` holds secret-bearing lines as TSV
(``line<TAB>secret<TAB>...``); ``clean.txt`` holds look-alike lines that must
not change.  Regenerate both with ``generate_corpus.py`` in that folder.
"""

from __future__ import annotations

import collections
from pathlib import Path

from hostdiag.agent.redact import Redactor

MIN_RECALL = 0.99
MAX_FALSE_POSITIVE_RATE = 0.01


def _secret_rows(fixtures_dir: Path) -> list[tuple[str, list[str]]]:
    rows = []
    for raw in (fixtures_dir / "redaction" / "secrets.txt").read_text(encoding="utf-8").splitlines():
        line, *secrets = raw.split("\t")
        assert secrets, f"corpus row without an expected secret: {line!r}"
        rows.append((line, secrets))
    return rows


def test_corpus_is_big_enough(fixtures_dir: Path) -> None:
    assert len(_secret_rows(fixtures_dir)) >= 150
    clean = (fixtures_dir / "redaction" / "clean.txt").read_text(encoding="utf-8").splitlines()
    assert len(clean) >= 1500


def test_recall_on_secret_lines(redactor: Redactor, fixtures_dir: Path) -> None:
    rows = _secret_rows(fixtures_dir)
    total = found = 0
    leaks: list[str] = []
    counts: collections.Counter[str] = collections.Counter()
    for line, secrets in rows:
        out = redactor.redact(line, counts)
        for secret in secrets:
            total += 1
            if secret in out:
                leaks.append(f"{secret!r} survived in {out!r}")
            else:
                found += 1
    recall = found / total
    print(f"\nredaction recall: {recall:.2%} ({found}/{total} secrets in {len(rows)} lines); hits by rule: "
          + ", ".join(f"{k}={v}" for k, v in sorted(counts.items())))
    assert recall >= MIN_RECALL, "\n".join(leaks[:20])


def test_false_positive_rate_on_clean_lines(redactor: Redactor, fixtures_dir: Path) -> None:
    lines = (fixtures_dir / "redaction" / "clean.txt").read_text(encoding="utf-8").splitlines()
    changed = []
    for line in lines:
        out = redactor.redact(line)
        if out != line:
            changed.append(f"{line!r} -> {out!r}")
    rate = len(changed) / len(lines)
    print(f"\nredaction false positives: {rate:.2%} ({len(changed)}/{len(lines)} clean lines changed)")
    assert rate <= MAX_FALSE_POSITIVE_RATE, "\n".join(changed[:20])


def test_corpus_as_one_block_matches_line_by_line(redactor: Redactor, fixtures_dir: Path) -> None:
    """The tailer redacts whole blocks: a block gives exactly the per-line results."""
    lines = [line for line, _ in _secret_rows(fixtures_dir)]
    lines += (fixtures_dir / "redaction" / "clean.txt").read_text(encoding="utf-8").splitlines()
    block = "\n".join(lines) + "\n"
    per_line_counts: collections.Counter[str] = collections.Counter()
    expected = "\n".join(redactor.redact(line, per_line_counts) for line in lines) + "\n"
    block_counts: collections.Counter[str] = collections.Counter()
    assert redactor.redact(block, block_counts) == expected
    assert block_counts == per_line_counts


def test_redacted_corpus_is_stable(redactor: Redactor, fixtures_dir: Path) -> None:
    block = "\n".join(line for line, _ in _secret_rows(fixtures_dir))
    once = redactor.redact(block)
    counts: collections.Counter[str] = collections.Counter()
    assert redactor.redact(once, counts) == once
    assert not counts
