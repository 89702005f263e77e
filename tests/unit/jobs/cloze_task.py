"""An lm-eval task the tests write themselves: which word comes next in GPL-2.

Each question is the first ten words of a GPL-2 sentence; the choices are the eleventh word and
three words that follow other sentences. The generative variant asks for the word itself
(greedy, up to four tokens, the first word of the answer must equal it, case aside): it needs
no log-probabilities, so it can be scored on a served endpoint as well as in process.

GPL-2 is none of the texts the runner's builtin data calibrates, trains or measures perplexity
on. The task directory holds the YAML and a JSONL beside it, referenced by a relative path, as
a task `source` on a PVC or in S3 would.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

__all__ = ["GENERATIVE_TASK_NAME", "TASK_NAME", "write_cloze_task"]

TASK_NAME = "license_cloze"
GENERATIVE_TASK_NAME = "license_cloze_words"
_TEXT = Path("/usr/share/common-licenses/GPL-2")
_CONTEXT_WORDS = 10
_CHOICES = 4

_DATA = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: questions.jsonl
test_split: test
"""
_YAML = """\
output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: "{{answer}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

_GENERATIVE_YAML = """\
output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{choices[answer]}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
filter_list:
  - name: first-word
    filter:
      - function: regex
        regex_pattern: "([A-Za-z]+)"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
    ignore_case: true
metadata:
  version: 1.0
"""


def write_cloze_task(
    directory: Path, questions: int = 40, name: str | None = None, *, generative: bool = False
) -> Path:
    """Write the task's YAML and `questions.jsonl` into `directory`; returns it. Both variants
    may share a directory (they read the same questions)."""
    name = name or (GENERATIVE_TASK_NAME if generative else TASK_NAME)
    items = _contexts_and_answers(questions)
    answers = [answer for _, answer in items]
    rows = []
    for index, (context, answer) in enumerate(items):
        choices = _distractors(answers, index)
        position = index % _CHOICES
        choices.insert(position, answer)
        rows.append({"context": context, "choices": choices, "answer": position})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "questions.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    template = _GENERATIVE_YAML if generative else _YAML
    (directory / f"{name}.yaml").write_text(_DATA.format(name=name) + template)
    return directory


def _contexts_and_answers(count: int) -> list[tuple[str, str]]:
    """(first ten words, the next word) of the first `count` long GPL-2 sentences."""
    text = _TEXT.read_text(encoding="utf-8")
    items = []
    for sentence in re.split(r"(?<=[.;:])\s+", text):
        words = sentence.split()
        if len(words) < _CONTEXT_WORDS + 4:
            continue
        answer = words[_CONTEXT_WORDS].strip(",.;:()\"'")
        if answer.isalpha() and len(answer) >= 3:
            items.append((" ".join(words[:_CONTEXT_WORDS]), answer))
        if len(items) == count:
            return items
    raise ValueError(f"{_TEXT} has fewer than {count} usable sentences")


def _distractors(answers: list[str], index: int) -> list[str]:
    """Three other questions' answers, none equal to this one's."""
    chosen: list[str] = []
    other = index
    while len(chosen) < _CHOICES - 1:
        other = (other + 7) % len(answers)
        word = answers[other]
        if word.lower() != answers[index].lower() and word not in chosen:
            chosen.append(word)
    return chosen
