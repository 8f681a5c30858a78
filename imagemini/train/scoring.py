"""How `imagemini eval` judges its answers, and the figures it reports (evaluate.py runs the model).

    tally = Tally()
    tally.add_text("vqa", example, thinking=False, got="Red.")
    tally.add_drawing(example, parse_image(pixels))   # None: the parser read no scene
    tally.report()    # {"scores", "strict", "draw_objects", "by_wording"}; tally.answers: every row

Text answers are compared exactly with the truth (JSON answers as parsed JSON). A drawing or an edit
is exact when the scene read back is the target; a drawing is also scored by GenEval's rules with
shape as the object class (`geneval_checks`; their mean is `geneval_overall`), as a whole scene
(`strict_checks`, the report's "strict"), and object by object, apart for held-out and trained
shape/colour pairs (`object_checks`, "draw_objects").
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

from imagemini.world import POSITIONS, Scene, parse_description
from imagemini.world.chat import Example, ImageRef
from imagemini.world.language import DrawRequest
from imagemini.world.scene import BACKGROUNDS
from imagemini.world.task_builder import is_heldout_combo

#: Tasks whose answers count as questions about a picture in the free-worded figures.
QUESTION_TASKS = ("count", "color_of", "where_is", "is_there", "bigger", "background", "reason_count", "reason_compare")

#: GenEval's six scores; their mean is its overall score.
GENEVAL = ("single_object", "two_objects", "counting", "colours", "position", "colour_attribution")


def text_is_correct(example: Example, got: str) -> bool:
    if example.task == "describe_json":
        try:
            return json.loads(got) == example.answer
        except json.JSONDecodeError:
            return False
    return got == str(example.answer).strip()


_NUMBER_WORDS = {"no": 0, "none": 0, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5}
_PLACE_WORDS = (("centre", "center"), ("middle", "center"), ("upper", "top"), ("lower", "bottom"), ("-", " "))
_NEGATIVE = re.compile(r"\b(no|not|none|isn't|there's no)\b")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def number_in(text: str) -> int | None:
    """The first number an answer states, in digits or words ("No red circles." is 0)."""
    for word in _words(text):
        if word.isdigit():
            return int(word)
        if word in _NUMBER_WORDS:
            return _NUMBER_WORDS[word]
    return None


def colour_in(text: str) -> str | None:
    """The first colour an answer names (grey is gray)."""
    for word in _words(text):
        word = "gray" if word == "grey" else word
        if word in BACKGROUNDS:
            return word
    return None


def place_in(text: str) -> str | None:
    """The place an answer names, in any of the grammar's words ("the upper left corner": top left)."""
    text = text.lower()
    for old, new in _PLACE_WORDS:
        text = text.replace(old, new)
    text = re.sub(r"\btop center\b", "top", re.sub(r"\bbottom center\b", "bottom", text))
    found = [p for p in sorted(POSITIONS, key=len, reverse=True) if re.search(rf"\b{p}\b", text)]
    return found[0] if found else None


def content_is_correct(example: Example, got: str) -> bool:
    """Whether a free-worded answer says the right thing, however it words it: the number of a count,
    the colour, the place, yes or no, the object a comparison names, the scene a caption describes,
    and that an absent object is absent."""
    truth, task = str(example.answer).strip(), example.task
    if task in ("describe_json", "smalltalk_greet", "smalltalk_capabilities", "smalltalk_decline"):
        return text_is_correct(example, got)
    if truth.startswith("There is no "):
        return bool(_NEGATIVE.search(got.lower()))
    if task in ("count", "reason_count") or (task == "reason_compare" and truth[:-1].isdigit()):
        return number_in(got) == int(truth[:-1])
    if task in ("color_of", "background"):
        return colour_in(got) == colour_in(truth)
    if task == "where_is":
        return place_in(got) == place_in(truth)
    if truth in ("Yes.", "No."):
        first = _words(got)[:1]
        return first == [truth[:-1].lower()]
    if task == "describe":
        try:
            return parse_description(got, strict=False) == parse_description(truth)
        except ValueError:
            return False
    return _words(got) == _words(truth)


def request_checks(request: DrawRequest, got: Scene | None) -> dict[str, bool]:
    """A free-worded drawing judged by what its request states: "fits" (every stated attribute
    right, as many objects as asked, nothing extra; open attributes free), and per attribute whether
    the drawing has every stated value of it ("count": the number of objects, "background"); a
    drawing the parser cannot read (None) has none of them."""
    objects = got.objects if got is not None else ()
    checks = {"fits": request.fits(got), "count": len(objects) == len(request.objects)}
    if request.background is not None:
        checks["background"] = got is not None and got.background == request.background
    for attribute in ("shape", "color", "size", "position"):
        stated = Counter(getattr(s, attribute) for s in request.objects if getattr(s, attribute) is not None)
        if stated:
            checks[attribute] = not stated - Counter(getattr(o, attribute) for o in objects)
    return checks


def wording(example: Example) -> str:
    return "new_wording" if example.heldout_phrasing else "train_wording"


def answer_row(example: Example, thinking: bool, got: str, ok: bool) -> dict:
    truth = example.answer.describe() if isinstance(example.answer, Scene) else example.answer
    question = " ".join(p for p in example.turns[-2].parts if isinstance(p, str))
    images = [p.scene.describe() for t in example.turns[:-1] for p in t.parts if isinstance(p, ImageRef)]
    row = {"task": example.task, "thinking": thinking, "wording": wording(example), "images": images,
           "question": question, "truth": truth, "output": got, "correct": ok}
    if example.said is not None:
        row["frame"] = example.said.frame[2:]
    return row


def geneval_checks(truth: Scene, got: Scene | None) -> dict[str, bool]:
    """GenEval's rules (Ghosh et al. 2023, `evaluate_images.py`) with shape as the object class:
    a requested object counts as drawn when one of its shape is there; colour and position are
    checked on objects of the requested shape; counting also fails on one object too many."""
    if got is None:
        return dict.fromkeys(("present", "counting", "colours", "position"), False)

    def drawn(*attrs: str) -> bool:
        # every requested object's attributes, as often as requested, among the drawn objects'
        key = lambda o: tuple(getattr(o, a) for a in attrs)  # noqa: E731
        return not Counter(map(key, truth.objects)) - Counter(map(key, got.objects))

    asked = Counter(o.shape for o in truth.objects)
    return {
        "present": drawn("shape"),
        "counting": Counter(o.shape for o in got.objects if o.shape in asked) == asked,
        "colours": drawn("shape", "color"),
        "position": drawn("shape", "position"),
    }


def object_checks(truth: Scene, got: Scene | None) -> list[tuple[str, bool]]:
    """Each requested object: ("heldout_combo" or "train_combo", drawn exactly at its position)."""
    at = {o.position: o for o in got.objects} if got is not None else {}
    return [("heldout_combo" if is_heldout_combo(o.shape, o.color) else "train_combo", at.get(o.position) == o)
            for o in truth.objects]


def strict_checks(truth: Scene, got: Scene | None) -> dict[str, bool]:
    """Whole-scene checks (the figures reported before GenEval's rules, kept for comparison)."""
    if got is None:
        return {"exact": False, "count": False, "colors": False, "positions": False, "attribution": False}
    t_objs, g_objs = truth.objects, got.objects
    by_pos = {o.position: o for o in g_objs}
    return {
        "exact": got == truth,
        "count": len(g_objs) == len(t_objs),
        "colors": sorted(o.color for o in g_objs) == sorted(o.color for o in t_objs),
        "positions": sorted(o.position for o in g_objs) == sorted(o.position for o in t_objs),
        "attribution": sorted((o.shape, o.color) for o in g_objs) == sorted((o.shape, o.color) for o in t_objs)
        and all(by_pos.get(o.position) is not None and by_pos[o.position].shape == o.shape for o in t_objs),
    }


def _mean(oks: list[bool]) -> float:
    return round(sum(oks) / len(oks), 4)


class Tally:
    """Every judged answer, grouped as the report shows them."""

    def __init__(self, by_content: bool = False) -> None:
        self.by_content = by_content  # free-worded chats: answers judged by content, drawings by their request
        self.leading_whitespace = 0  # answers that start with a space or other whitespace
        self.free: dict[str, list[bool]] = defaultdict(list)  # free-worded figures: by frame, synonym, attribute
        self.correct: dict[str, list[bool]] = defaultdict(list)  # text answers by group and by task
        self.checks: dict[str, list[bool]] = defaultdict(list)  # drawings and edits: exact, GenEval's scores
        self.strict: dict[str, list[bool]] = defaultdict(list)  # drawings as whole scenes
        self.objects: dict[str, list[bool]] = defaultdict(list)  # each requested object of a drawing, by pair
        self.wording: dict[str, list[bool]] = defaultdict(list)  # held-out scenes asked in trained vs new words
        self.answers: list[dict] = []  # every example's question, truth and output: answers.jsonl

    def add_text(self, group: str, example: Example, thinking: bool, raw: str) -> None:
        """A text answer as the model wrote it (leading whitespace is counted, then stripped)."""
        got = raw.strip()
        self.leading_whitespace += raw[:1].isspace()
        ok = content_is_correct(example, got) if self.by_content else text_is_correct(example, got)
        if self.by_content and not thinking:
            self._add_free(example, ok)
        key = f"{group}_thinking" if thinking else group
        self.answers.append(answer_row(example, thinking, got, ok))
        self.correct[key].append(ok)
        self.wording[f"{key}@{wording(example)}"].append(ok)
        self.correct[f"task:{example.task}{'+think' if thinking else ''}"].append(ok)

    def add_drawing(self, example: Example, scene: Scene | None) -> None:
        """A drawing or an edit, `scene` as the parser read it (None: unreadable or not drawn)."""
        exact = scene == example.answer
        if self.by_content and example.request is not None:
            checks = request_checks(example.request, scene)
            exact = checks.pop("fits")
            for attribute, ok in checks.items():
                self.free[f"draw_attribute:{attribute}"].append(ok)
        if self.by_content:
            self._add_free(example, exact)
        group = "draw" if example.task == "draw" else "edit"
        self.checks[f"{group}_exact"].append(exact)
        self.wording[f"{group}_exact@{wording(example)}"].append(exact)
        self.answers.append(answer_row(example, False, scene.describe() if scene else "(no scene read)", exact))
        if group == "draw":
            self._add_geneval(example.answer, scene)

    def _add_free(self, example: Example, ok: bool) -> None:
        if example.task in QUESTION_TASKS:
            self.free["questions"].append(ok)
        if example.task in ("count", "reason_count"):
            self.free["counting"].append(ok)
        if example.said is None:
            return
        self.free[f"frame:{example.said.intent}|{example.said.frame[2:]}"].append(ok)
        for word in example.said.heldout_words or ("(trained words only)",):
            self.free[f"synonym:{word}"].append(ok)

    def _add_geneval(self, truth: Scene, scene: Scene | None) -> None:
        for pair, ok in object_checks(truth, scene):
            self.objects[pair].append(ok)
        k = len(truth.objects)
        geneval, whole = geneval_checks(truth, scene), strict_checks(truth, scene)
        if k == 1:
            self.checks["single_object"].append(geneval["present"])
            self.checks["colours"].append(geneval["colours"])
            self.strict["single_object"].append(whole["exact"])
        if k == 2:
            self.checks["two_objects"].append(geneval["present"])
            self.checks["colour_attribution"].append(geneval["colours"])
            self.strict["two_objects"].append(whole["exact"])
            self.strict["colour_attribution"].append(whole["attribution"])
        self.checks["counting"].append(geneval["counting"])
        self.checks["position"].append(geneval["position"])
        self.strict["counting"].append(whole["count"])
        self.strict["colours"].append(whole["colors"])
        self.strict["position"].append(whole["positions"])

    def report(self) -> dict:
        """The report's figures: each a fraction right, rounded to 4 places."""
        scores: dict[str, float | None] = {key: _mean(oks) for key, oks in self.correct.items()}
        for key in ("draw_exact", "edit_exact", *GENEVAL):
            oks = self.checks[key]
            scores[key] = _mean(oks) if oks else None  # None: no such example drawn
        parts = [scores.get(k) for k in GENEVAL]
        scores["geneval_overall"] = round(sum(parts) / len(parts), 4) if None not in parts else None
        return {
            "scores": scores,
            "strict": {key: _mean(oks) for key, oks in self.strict.items()},
            "draw_objects": {pair: _mean(oks) for pair, oks in sorted(self.objects.items())},
            "by_wording": {key: _mean(oks) for key, oks in sorted(self.wording.items())},
            "leading_whitespace": self.leading_whitespace,
            **({"free_wording": self._free_report()} if self.by_content else {}),
        }

    def _free_report(self) -> dict:
        """The free-worded figures: questions, counting, drawings; then each frame, held-out synonym
        and stated drawing attribute with its count."""
        out: dict = {key: _mean(self.free[key]) for key in ("questions", "counting") if self.free[key]}
        if self.checks["draw_exact"]:
            out["drawings"] = _mean(self.checks["draw_exact"])
        for prefix in ("frame", "synonym", "draw_attribute"):
            rows = {k.split(":", 1)[1]: {"right": _mean(v), "n": len(v)} for k, v in sorted(self.free.items())
                    if k.startswith(prefix + ":")}
            out[f"by_{prefix}"] = rows
        return out
