"""How the tasks word their requests and name objects: templates per group, fixed replies, system
prompts, and the words that fill the templates.

Questions are answerable: an object is named by a description that fits exactly one object in the
scene ("the circle" only if there is one circle, else "the red circle", "the large circle", "the red
object" or "the object at the top left"), never by the attribute the question asks about
(:func:`references`).

Held-out phrasings (HELDOUT_PHRASINGS): per template group, templates train never uses; a heldout
example draws from them with probability 1/2 (all small talk heldout examples do) and records it in
``Example.heldout_phrasing`` (tasks.py).
"""

from __future__ import annotations

from .scene import Scene, SceneObject

GREETING = "Hello! I can describe, draw and edit pictures of simple shapes. What would you like?"
CAPABILITIES = (
    "I am a small model for a world of simple shapes. I can describe, draw and edit pictures of circles, "
    "squares, triangles and crosses, and answer questions about them."
)
DECLINE = "Sorry, I can only describe, draw and edit pictures of simple shapes."

SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are imagemini, an assistant for a world of simple shapes.",
    "Answer the user's requests about pictures of shapes.",
)

# --- Phrasings: group -> (train templates, held-out templates) ---------------------------
# Placeholders: {ref} a unique object description, {what} a plural kind, {thing} "a"/"an" + a
# kind, {a}/{b} two references, {color}, {pos}, {obj} "a small red circle", {d} a description
# without capital or period, {D} the canonical description sentence.

PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "describe": (
        ("Describe the image.", "What is in this picture?", "Describe this picture.", "What do you see?",
         "Tell me what is in the image.", "Give a description of the image.", "What does the image show?",
         "Describe what you see.", "What is shown here?", "Look at the picture and describe it.",
         "Write a caption for this image.", "Caption this picture.", "What's in the image?",
         "Describe the scene.", "Give me a short description of this picture."),
        ("Can you tell me what this image shows?", "Please explain what is drawn here."),
    ),
    "count": (
        ("How many {what} are there?", "How many {what} are in the image?", "Count the {what}.",
         "How many {what} do you see?", "How many {what} can you see in this picture?",
         "How many {what} does the picture have?", "Count the {what} in the picture.",
         "How many {what} are shown?", "How many {what} are visible?", "Count all the {what} you see.",
         "How many {what} are in this picture?"),
        ("What is the number of {what}?", "Tell me how many {what} there are."),
    ),
    "color_of": (
        ("What colour is the {ref}?", "What color is the {ref}?", "Which colour is the {ref}?",
         "Tell me the colour of the {ref}.", "What color does the {ref} have?",
         "Which color is the {ref}?", "Name the colour of the {ref}.", "What colour do you see on the {ref}?",
         "What colour has the {ref}?", "Say what colour the {ref} is."),
        ("What is the colour of the {ref}?",),
    ),
    "where_is": (
        ("Where is the {ref}?", "Where is the {ref} located?", "In which part of the image is the {ref}?",
         "Where can I find the {ref}?",
         "Where's the {ref}?", "Which part of the picture is the {ref} in?", "Tell me where the {ref} is.",
         "Where in the picture is the {ref}?", "Where is the {ref} placed?"),
        ("What is the position of the {ref}?",),
    ),
    "is_there": (
        ("Is there {thing} in the image?", "Is there {thing}?", "Do you see {thing}?",
         "Does the picture contain {thing}?",
         "Is there {thing} in the picture?", "Does the image contain {thing}?",
         "Is there {thing} anywhere in the image?", "Do you see {thing} in this picture?",
         "Does this picture show {thing}?"),
        ("Can you find {thing} here?",),
    ),
    "bigger": (
        ("Which is bigger, the {a} or the {b}?", "Which is larger, the {a} or the {b}?",
         "Which one is bigger: the {a} or the {b}?", "Is the {a} or the {b} bigger?",
         "Which is bigger: the {a} or the {b}?", "Which one is larger, the {a} or the {b}?",
         "Is the {a} bigger or the {b}?", "Between the {a} and the {b}, which is bigger?"),
        ("Which of the two is bigger, the {a} or the {b}?",),
    ),
    "smaller": (
        ("Which is smaller, the {a} or the {b}?", "Which one is smaller: the {a} or the {b}?",
         "Is the {a} or the {b} smaller?",
         "Which one is smaller, the {a} or the {b}?", "Which is smaller: the {a} or the {b}?",
         "Between the {a} and the {b}, which is smaller?"),
        ("Which of the two is smaller, the {a} or the {b}?",),
    ),
    "more": (
        ("Are there more {a} than {b}?", "Does the image have more {a} than {b}?",
         "Are there more {a} than {b} in the picture?",
         "Are there more {a} than {b} here?", "Does the picture have more {a} than {b}?",
         "Are there more {a} than {b} in this image?"),
        ("Do you see more {a} than {b}?",),
    ),
    "draw": (
        ("Draw {d}.", "Make a picture of {d}.", "Can you draw {d}?", "Please draw {d}.",
         "Generate an image of {d}.", "Create a picture showing {d}.", "Show me {d}.", "{D} Draw it.",
         "Draw me {d}.", "Draw a picture of {d}.", "Create an image of {d}.", "Sketch {d}.", "Render {d}.",
         "Produce an image of {d}.", "Please make an image of {d}.", "Can you make a picture of {d}?"),
        ("I would like an image of {d}.", "Could you paint {d}?"),
    ),
    "background": (
        ("What colour is the background?", "What color is the background?", "Which colour is the background?",
         "Name the background colour."),
        ("What is the colour of the background?",),
    ),
    "describe_json": (
        ("Describe the image as JSON.", "Give me the scene as JSON.", "Return the objects in the picture as JSON.",
         "Describe this picture in JSON format.", "Output a JSON description of the image.",
         "Give the scene in JSON.", "Describe the picture as a JSON object.", "Write the scene as JSON.",
         "Return a JSON description of this picture.", "Convert the image into JSON."),
        ("What is in the image? Answer in JSON.",),
    ),
    "edit_recolor": (
        ("Make the {ref} {color}.", "Change the colour of the {ref} to {color}.", "Paint the {ref} {color}.",
         "Recolour the {ref} {color}.", "Change the {ref} to {color}.",
         "Colour the {ref} {color}.", "Give the {ref} the colour {color}.",
         "Recolor the {ref} {color}.",
         "Please make the {ref} {color}."),
        ("Turn the {ref} {color}.",),
    ),
    "edit_remove": (
        ("Remove the {ref}.", "Delete the {ref}.", "Take away the {ref}.", "Get rid of the {ref}.",
         "Take the {ref} out.",
         "Remove the {ref} from the picture.", "Delete the {ref} from the image.", "Please remove the {ref}.",
         "Clear away the {ref}."),
        ("Erase the {ref}.",),
    ),
    "edit_add": (
        ("Add {obj} at the {pos}.", "Put {obj} at the {pos}.", "Draw {obj} at the {pos}.",
         "Place {obj} at the {pos}.",
         "Also add {obj} at the {pos}.", "Please add {obj} at the {pos}.", "Draw in {obj} at the {pos}.",
         "Now put {obj} at the {pos}."),
        ("Insert {obj} at the {pos}.",),
    ),
    "edit_move": (
        ("Move the {ref} to the {pos}.", "Put the {ref} at the {pos}.", "Shift the {ref} to the {pos}.",
         "Move the {ref} over to the {pos}.",
         "Please move the {ref} to the {pos}.", "Drag the {ref} to the {pos}.",
         "Place the {ref} at the {pos}.", "Now move the {ref} to the {pos}."),
        ("Relocate the {ref} to the {pos}.",),
    ),
    "smalltalk_greet": (
        ("Hello!", "Hi!", "Hi there.", "Good morning!", "Hey, how are you?", "Hello, who is this?", "Hey!",
         "Hello there!", "Good afternoon!", "Howdy!", "Hey there, how's it going?",
         "Hi! Who am I talking to?"),
        ("Greetings!", "Good evening, nice to meet you."),
    ),
    "smalltalk_capabilities": (
        ("What can you do?", "What are you able to do?", "Who are you?", "What can you help me with?",
         "Tell me about yourself.", "How can you help me?", "What kind of pictures can you make?",
         "What do you do?", "What can I ask you?", "What are you for?", "Introduce yourself.",
         "What is this assistant able to do?", "Which tasks can you handle?", "What are your abilities?",
         "Tell me what you can do.", "What are your capabilities?", "What sort of tasks can you do?",
         "What do you know how to do?", "Describe your abilities.", "What jobs can you do for me?",
         "What are you capable of?"),
        ("What are your skills?", "Explain what you are good at."),
    ),
    "smalltalk_decline": (
        ("What is the capital of France?", "Write me a poem about the sea.", "Can you help me with my taxes?",
         "What's the weather like today?", "Tell me a joke.", "Translate 'good night' into Spanish.",
         "Who won the football game yesterday?", "Can you write some Python code for me?",
         "What is 17 times 23?", "Draw a cat.", "Please draw a house with a garden.",
         "Give me a recipe for pancakes.", "Summarise the news for me.",
         "Who wrote Hamlet?", "Book me a flight to Rome.", "What time is it in Tokyo?", "Solve x^2 = 9.",
         "Write an email to my boss.", "What's the best phone to buy?", "Play some music.",
         "How tall is Mount Everest?", "Draw a tree.", "Draw a car for me.",
         "Tell me about the history of Rome.", "Explain quantum physics.", "What should I eat tonight?",
         "Sing me a song.", "How do I bake bread?", "What is the meaning of life?", "Can you do my homework?",
         "Draw a picture of the ocean.", "Write a story about a dragon.", "What is 2 plus 2?",
         "Give me stock tips.", "How far is the moon?", "Who is the president?",
         "Translate this sentence into French.", "Draw a horse."),
        ("Recommend a good book.", "Draw a portrait of my dog.", "How do I fix my bicycle?"),
    ),
}
HELDOUT_PHRASINGS: dict[str, tuple[str, ...]] = {group: held for group, (_, held) in PHRASINGS.items()}

PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}


def kind_noun(shape: str | None, color: str | None) -> str:
    """Plural noun for a kind of object: 'objects', 'circles', 'red objects', 'red circles'."""
    noun = PLURALS[shape] if shape else "objects"
    return f"{color} {noun}" if color else noun


_REF_KEYS = (("shape",), ("color", "shape"), ("size", "shape"), ("color",), ("position",))


def _ref_text(obj: SceneObject, keys: tuple[str, ...]) -> str:
    if keys == ("position",):
        return f"object at the {obj.position}"
    if keys == ("color",):
        return f"{obj.color} object"
    return " ".join(getattr(obj, k) for k in keys)


def references(scene: Scene, obj: SceneObject, avoid: tuple[str, ...] = ()) -> list[str]:
    """Descriptions that pick out ``obj`` alone in ``scene`` and name none of the ``avoid`` attributes."""
    out = []
    for keys in _REF_KEYS:
        if any(k in avoid for k in keys):
            continue
        same = [o for o in scene.objects if all(getattr(o, k) == getattr(obj, k) for k in keys)]
        if len(same) == 1:
            out.append(_ref_text(obj, keys))
    return out


def object_mention(obj: SceneObject) -> str:
    """'the red circle at the top left': how a thought points at an object."""
    return f"the {obj.color} {obj.shape} at the {obj.position}"


