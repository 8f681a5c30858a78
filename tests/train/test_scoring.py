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


def test_free_worded_answers_are_judged_by_their_content():
    from imagemini.train.scoring import colour_in, content_is_correct, number_in, place_in
    from imagemini.world.chat import Example

    def judged(task: str, truth: str, got: str) -> bool:
        return content_is_correct(Example(task, (), False, truth, "wording"), got)

    assert number_in("There are three shapes.") == 3 and number_in("3.") == 3 and number_in("No red circles.") == 0
    assert number_in("A large red circle.") is None
    assert judged("count", "3.", "Three.") and judged("count", "0.", "There are none.")
    assert not judged("count", "3.", "A small red circle at the top and a blue square.")
    assert colour_in("It is grey.") == "gray"
    assert judged("background", "Yellow.", "The background is yellow.") and not judged("background", "Yellow.", "Red.")
    assert place_in("In the upper left corner.") == "top left" and place_in("in the middle") == "center"
    assert place_in("At the top.") == "top" and place_in("at the bottom-right") == "bottom right"
    assert judged("where_is", "At the top left.", "It is in the upper left corner.")
    assert not judged("where_is", "At the top left.", "At the top.")
    assert judged("where_is", "There is no red circle.", "There is no red circle here.")
    assert not judged("color_of", "There is no red circle.", "Red.")
    assert judged("is_there", "Yes.", "Yes, there is.") and not judged("is_there", "Yes.", "No.")
    assert judged("bigger", "The red circle.", "the red circle") and not judged("bigger", "The red circle.", "The square.")


def test_free_worded_drawings_are_judged_by_what_they_state():
    from imagemini.train.scoring import request_checks
    from imagemini.world.language import DrawRequest, ObjectSpec

    three_red_circles = DrawRequest(((ObjectSpec(shape="circle", color="red"), 3),))
    drawn = Scene("white", tuple(SceneObject("circle", "red", size, pos)
                                 for size, pos in (("small", "top"), ("large", "left"), ("small", "center"))))
    assert request_checks(three_red_circles, drawn) == {"fits": True, "count": True, "shape": True, "color": True}
    two = Scene("white", drawn.objects[:2])
    assert request_checks(three_red_circles, two) == dict.fromkeys(("fits", "count", "shape", "color"), False)  # as often as stated
    on_black = DrawRequest(((ObjectSpec(size="large", position="center"), 1),), background="black")
    checks = request_checks(on_black, Scene("white", (SceneObject("cross", "blue", "large", "center"),)))
    assert checks == {"fits": False, "count": True, "background": False, "size": True, "position": True}
    assert request_checks(on_black, None) == dict.fromkeys(("fits", "count", "background", "size", "position"), False)
