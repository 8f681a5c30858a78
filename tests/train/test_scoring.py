"""The rules `imagemini eval` judges drawings by: GenEval's per-attribute checks on objects of the
asked shape, and each requested object scored by its shape/colour pair."""

from __future__ import annotations

from imagemini.train.scoring import geneval_checks, object_checks
from imagemini.world import Scene, SceneObject


def test_geneval_rules_judge_each_attribute_on_objects_of_the_asked_shape():
    purple_circle = Scene("white", (SceneObject("circle", "purple", "large", "top left"),))
    red_circle_elsewhere = Scene("white", (SceneObject("circle", "red", "small", "center"),))
    assert geneval_checks(purple_circle, red_circle_elsewhere) == {
        "present": True, "counting": True, "colours": False, "position": False}
    purple_square = Scene("white", (SceneObject("square", "purple", "large", "top left"),))
    assert geneval_checks(purple_circle, purple_square) == dict.fromkeys(("present", "counting", "colours", "position"), False)
    two_circles = Scene("white", (*purple_circle.objects, SceneObject("circle", "blue", "small", "center")))
    assert geneval_checks(purple_circle, two_circles) == {
        "present": True, "counting": False, "colours": True, "position": True}  # one circle too many
    with_a_square = Scene("white", (*purple_circle.objects, SceneObject("square", "blue", "small", "center")))
    assert all(geneval_checks(purple_circle, with_a_square).values())  # other shapes are not counted
    assert not any(geneval_checks(purple_circle, None).values())

    asked = Scene("white", (SceneObject("circle", "red", "large", "top left"), SceneObject("square", "blue", "small", "center")))
    swapped = Scene("white", (SceneObject("circle", "blue", "large", "top left"), SceneObject("square", "red", "small", "center")))
    checks = geneval_checks(asked, swapped)
    assert checks["present"] and checks["position"] and not checks["colours"]  # colour attribution fails


def testobject_checks_score_each_requested_object_by_its_pair():
    blue_triangle = SceneObject("triangle", "blue", "large", "top left")  # a held-out pair
    red_circle = SceneObject("circle", "red", "small", "center")
    asked = Scene("white", (blue_triangle, red_circle))
    purple_instead = SceneObject("triangle", "purple", "large", "top left")
    assert object_checks(asked, Scene("white", (purple_instead, red_circle))) == [
        ("heldout_combo", False), ("train_combo", True)]
    assert object_checks(asked, Scene("white", (red_circle, blue_triangle))) == [
        ("heldout_combo", True), ("train_combo", True)]  # order of the drawn objects does not matter
    moved = SceneObject("circle", "red", "small", "bottom")
    assert object_checks(asked, Scene("white", (blue_triangle, moved))) == [
        ("heldout_combo", True), ("train_combo", False)]
    assert object_checks(asked, None) == [("heldout_combo", False), ("train_combo", False)]
