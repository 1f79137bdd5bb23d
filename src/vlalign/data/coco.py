"""The 80 COCO object classes and the words that name them, for CHAIR.

Facts from the CHAIR paper's synonym list (Rohrbach et al. 2018, `data/synonyms.txt` of its code), kept
in this table form: each key is the COCO category name (as in `instances_*.json`), each value the words
and phrases that count as a mention of it. Misspellings in the original list (``televison``, ``phon``)
are kept because they catch the same typos in model outputs.

`DOUBLE_WORDS` maps two-word phrases to the word they stand for before synonyms are looked up: COCO's own
two-word classes stay whole ("hot dog" is not a dog), qualifiers fold into the animal ("baby cow" is a
cow, not a person) and compounds that are not objects are kept apart ("train track" is not a train).
"""

from __future__ import annotations

SYNONYMS: dict[str, tuple[str, ...]] = {
    "person": (
        "girl", "boy", "man", "woman", "kid", "child", "chef", "baker", "people", "adult", "rider",
        "children", "baby", "worker", "passenger", "sister", "biker", "policeman", "cop", "officer", "lady",
        "cowboy", "bride", "groom", "male", "female", "guy", "traveler", "mother", "father", "gentleman",
        "pitcher", "player", "skier", "snowboarder", "skater", "skateboarder", "foreigner", "caller",
        "offender", "coworker", "trespasser", "patient", "politician", "soldier", "grandchild", "serviceman",
        "walker", "drinker", "doctor", "bicyclist", "thief", "buyer", "teenager", "student", "camper",
        "driver", "solider", "hunter", "shopper", "villager",
    ),
    "bicycle": ("bike", "unicycle", "minibike", "trike"),
    "car": ("automobile", "van", "minivan", "sedan", "suv", "hatchback", "cab", "jeep", "coupe", "taxicab",
            "limo", "taxi"),
    "motorcycle": ("scooter", "motor bike", "motor cycle", "motorbike", "moped"),
    "airplane": ("jetliner", "plane", "air plane", "monoplane", "aircraft", "jet", "airbus", "biplane",
                 "seaplane"),
    "bus": ("minibus", "trolley"),
    "train": ("locomotive", "tramway", "caboose"),
    "truck": ("pickup", "lorry", "hauler", "firetruck"),
    "boat": (
        "ship", "liner", "sailboat", "motorboat", "dinghy", "powerboat", "speedboat", "canoe", "skiff",
        "yacht", "kayak", "catamaran", "pontoon", "houseboat", "vessel", "rowboat", "trawler", "ferryboat",
        "watercraft", "tugboat", "schooner", "barge", "ferry", "sailboard", "paddleboat", "lifeboat",
        "freighter", "steamboat", "riverboat", "battleship", "steamship",
    ),
    "traffic light": ("street light", "traffic signal", "stop light", "streetlight", "stoplight"),
    "fire hydrant": ("hydrant",),
    "stop sign": (),
    "parking meter": (),
    "bench": ("pew",),
    "bird": (
        "ostrich", "owl", "seagull", "goose", "duck", "parakeet", "falcon", "robin", "pelican", "waterfowl",
        "heron", "hummingbird", "mallard", "finch", "pigeon", "sparrow", "seabird", "osprey", "blackbird",
        "fowl", "shorebird", "woodpecker", "egret", "chickadee", "quail", "bluebird", "kingfisher", "buzzard",
        "willet", "gull", "swan", "bluejay", "flamingo", "cormorant", "parrot", "loon", "gosling",
        "waterbird", "pheasant", "rooster", "sandpiper", "crow", "raven", "turkey", "oriole", "cowbird",
        "warbler", "magpie", "peacock", "cockatiel", "lorikeet", "puffin", "vulture", "condor", "macaw",
        "peafowl", "cockatoo", "songbird",
    ),
    "cat": ("kitten", "feline", "tabby"),
    "dog": (
        "puppy", "beagle", "pup", "chihuahua", "schnauzer", "dachshund", "rottweiler", "canine", "pitbull",
        "collie", "pug", "terrier", "poodle", "labrador", "doggie", "doberman", "mutt", "doggy", "spaniel",
        "bulldog", "sheepdog", "weimaraner", "corgi", "cocker", "greyhound", "retriever", "brindle", "hound",
        "whippet", "husky",
    ),
    "horse": ("colt", "pony", "racehorse", "stallion", "equine", "mare", "foal", "palomino", "mustang",
              "clydesdale", "bronc", "bronco"),
    "sheep": ("lamb", "ram", "goat", "ewe"),
    "cow": ("cattle", "oxen", "ox", "calf", "holstein", "heifer", "buffalo", "bull", "zebu", "bison"),
    "elephant": (),
    "bear": ("panda",),
    "zebra": (),
    "giraffe": (),
    "backpack": ("knapsack",),
    "umbrella": (),
    "handbag": ("wallet", "purse", "briefcase"),
    "tie": ("bow", "bow tie"),
    "suitcase": ("suit case", "luggage"),
    "frisbee": (),
    "skis": ("ski",),
    "snowboard": (),
    "sports ball": ("ball",),
    "kite": (),
    "baseball bat": (),
    "baseball glove": (),
    "skateboard": (),
    "surfboard": ("longboard", "skimboard", "shortboard", "wakeboard"),
    "tennis racket": ("racket",),
    "bottle": (),
    "wine glass": (),
    "cup": (),
    "fork": (),
    "knife": ("pocketknife", "knive"),
    "spoon": (),
    "bowl": ("container",),
    "banana": (),
    "apple": (),
    "sandwich": ("burger", "sub", "cheeseburger", "hamburger"),
    "orange": (),
    "broccoli": (),
    "carrot": (),
    "hot dog": (),
    "pizza": (),
    "donut": ("doughnut", "bagel"),
    "cake": ("cheesecake", "cupcake", "shortcake", "coffeecake", "pancake"),
    "chair": ("seat", "stool"),
    "couch": ("sofa", "recliner", "futon", "loveseat", "settee", "chesterfield"),
    "potted plant": ("houseplant",),
    "bed": (),
    "dining table": ("table", "desk"),
    "toilet": ("urinal", "commode", "lavatory", "potty"),
    "tv": ("monitor", "televison", "television"),
    "laptop": ("computer", "notebook", "netbook", "lenovo", "macbook", "laptop computer"),
    "mouse": (),
    "remote": (),
    "keyboard": (),
    "cell phone": ("mobile phone", "phone", "cellphone", "telephone", "phon", "smartphone", "iphone"),
    "microwave": (),
    "oven": ("stovetop", "stove", "stove top oven"),
    "toaster": (),
    "sink": (),
    "refrigerator": ("fridge", "freezer"),
    "book": (),
    "clock": (),
    "vase": (),
    "scissors": (),
    "teddy bear": ("teddybear",),
    "hair drier": ("hairdryer",),
    "toothbrush": (),
}

# Qualifiers that would otherwise fire for "person" ("baby elephant", "passenger jet"), and the two
# phrases that name one object each; every CHAIR variant joins these.
_ANIMALS = ("bird", "cat", "dog", "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "animal", "cub")
QUALIFIED: dict[str, str] = {
    **{f"{q} {a}": a for a in _ANIMALS for q in ("baby", "adult")},
    **{f"passenger {v}": v for v in ("jet", "train")},
    "bow tie": "tie",
    "toilet seat": "toilet",
}

DOUBLE_WORDS: dict[str, str] = {
    **{phrase: phrase for words in ([k, *v] for k, v in SYNONYMS.items()) for phrase in words
       if phrase.count(" ") == 1},
    "home plate": "home plate",
    "train track": "train track",
    **QUALIFIED,
}

# The official CHAIR code (`utils/chair.py` with `data/synonyms.txt`) reads its list with `split(', ')`;
# three of its entries can therefore never match a lower-cased token: "motor bike" and "cheesecake" carry
# a leading space (a double space in the file) and "iPhone" a capital. The table above repairs them; the
# official mode keeps them as the file has them.
OFFICIAL_SPELLINGS: dict[str, str] = {"motor bike": " motor bike", "cheesecake": " cheesecake", "iphone": "iPhone"}

# The two-word phrases the official CHAIR code joins before looking words up (its `coco_double_words`
# plus its qualifier rules). "dining table" is not among them, so it counts through "table"; pattern's
# singularize turns "glass" into "glas", hence "wine glas".
OFFICIAL_DOUBLE_WORDS: dict[str, str] = {
    **{p: p for p in ("motor bike", "motor cycle", "air plane", "traffic light", "street light", "traffic signal",
                      "stop light", "fire hydrant", "stop sign", "parking meter", "suit case", "sports ball",
                      "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog", "cell phone",
                      "mobile phone", "teddy bear", "hair drier", "potted plant", "bow tie", "laptop computer",
                      "stove top oven", "home plate", "train track")},
    **QUALIFIED,
    "wine glas": "wine glass",
}

# RLAIF-V's Object HalBench reads RLHF-V's `synonyms_refine.txt`: the official list with the leading
# spaces stripped ("iPhone" keeps its capital) and these words added.
REFINED_ADDITIONS: dict[str, tuple[str, ...]] = {
    "person": ("brother", "pedestrian"),
    "dining table": ("coffee table",),
    "remote": ("remote control",),
}
