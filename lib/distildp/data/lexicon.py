"""The words the built-in review source writes with: each business category's aspects (the latent topics) and
their lexicons, which categories are private and which public (and which private aspects the public ones borrow),
the sentiment words, sentence starters and glue words. `Lexicon` bundles them with the general words and bigrams
counted in Python's documentation (`pydoc_lexicon`), or a handful of words for enumerable tests (`tiny_lexicon`).
How a document is drawn from them, with exact probabilities, is `distildp.data.source`.
"""

from __future__ import annotations

from dataclasses import dataclass

# Each category's lexicon is the union of its aspects (the latent topics).
CATEGORY_ASPECTS: dict[str, dict[str, list[str]]] = {
    "Restaurants": {
        "food": "pizza pasta burger tacos sushi noodles salad steak soup dessert".split(),
        "service": "waiter waitress server host seated refills tip attentive ordered reservation".split(),
        "price": "portions pricey cheap affordable bill menu specials deal bargain overpriced".split(),
        "ambience": "patio booth music decor cozy crowded noisy lighting tables vibe".split(),
    },
    "Hotels & Travel": {
        "room": "bed pillows sheets shower towels bathroom suite balcony carpet minibar".split(),
        "staff": "concierge receptionist checkin checkout frontdesk bellhop housekeeping valet luggage upgrade".split(),
        "location": "downtown airport beach shuttle walking distance view subway nearby resort".split(),
        "amenities": "pool gym breakfast buffet wifi spa lobby elevator parking sauna".split(),
    },
    "Automotive": {
        "repair": "mechanic brakes transmission engine oil tires alignment battery muffler diagnostic".split(),
        "cost": "estimate quote invoice labor parts warranty charged overcharged discount receipt".split(),
        "wait": "appointment loaner shuttle waiting hours towed dropped pickup schedule rental".split(),
        "dealership": "dealer salesman lease financing sedan truck suv mileage trade inspection".split(),
    },
    "Beauty & Spas": {
        "hair": "haircut stylist salon bangs highlights blowout color trim layers shampoo".split(),
        "nails": "manicure pedicure polish gel acrylic cuticles nail technician toes shellac".split(),
        "massage": "massage masseuse facial tension knots aromatherapy relaxing deep tissue scrub".split(),
        "booking": (
            "booked walkin rescheduled deposit gratuity membership package voucher giftcard consultation"
        ).split(),
    },
    "Health & Medical": {
        "dentist": "dentist hygienist cleaning cavity filling crown braces molar xray gums".split(),
        "doctor": "doctor physician nurse diagnosis prescription checkup referral specialist symptoms clinic".split(),
        "office": "receptionist waiting paperwork insurance copay billing scheduling lobby forms lounge".split(),
        "care": "gentle painless anxious thorough explained caring bedside patient treatment recovery".split(),
    },
    "Pets": {
        "grooming": "groomer bath haircut nails fur shedding brushing trim shampoo bow".split(),
        "vet": "vet veterinarian vaccines checkup surgery kitten puppy spay neuter fleas".split(),
        "boarding": "boarding kennel daycare sitter walker overnight crate playtime leash yard".split(),
        "store": "treats kibble toys chew collar aquarium hamster bird cat dog".split(),
    },
    "Shopping": {
        "clothing": "dress jeans shirt jacket shoes sizes fitting racks boutique sweater".split(),
        "checkout": "cashier register receipt refund exchange returns coupon sale clearance line".split(),
        "store": "aisles shelves stocked inventory selection mall outlet display brands merchandise".split(),
        "online": "shipping delivery package tracking website order warehouse box arrived damaged".split(),
    },
    "Home Services": {
        "plumbing": "plumber leak pipe faucet drain toilet water heater clog sink".split(),
        "electrical": "electrician wiring outlet breaker panel fixture lights switch voltage fan".split(),
        "moving": "movers truck boxes furniture couch packed loaded unloaded stairs apartment".split(),
        "contractor": "contractor remodel kitchen flooring drywall paint roof permit tile cabinets".split(),
    },
    "Nightlife": {
        "drinks": "cocktail beer wine whiskey bartender shots martini pint tap mojito".split(),
        "music": "dj band dance floor karaoke live concert playlist stage bass".split(),
        "crowd": "bouncer line cover crowd packed drunk friends bachelorette locals regulars".split(),
        "atmosphere": "rooftop lounge neon dim patio hookah pool billiards jukebox booths".split(),
    },
    "Active Life": {
        "gym": "treadmill weights trainer classes membership locker squat cardio yoga pilates".split(),
        "outdoors": "hiking trail park kayak bike camping golf course scenery lake".split(),
        "sports": "tennis court league soccer basketball swimming lanes coach team tournament".split(),
        "studio": "instructor mat stretching spin barre climbing bouldering belay warmup cooldown".split(),
    },
}
PRIVATE_CATEGORIES = ["Restaurants", "Hotels & Travel", "Automotive", "Beauty & Spas", "Health & Medical", "Pets"]
PUBLIC_CATEGORIES = ["Shopping", "Home Services", "Nightlife", "Active Life"]
# Public reviews cover the private domain the way web text covers Yelp for GPT-2: every aspect of a private
# category is also written about in exactly one public category (same words, the public category's own word
# weights and aspect mix). What stays private: the private categories themselves (their combinations of aspects,
# star skews and word weights) and the control codes.
BORROWED_ASPECTS: dict[str, list[tuple[str, str]]] = {
    "Nightlife": [("Restaurants", a) for a in ("food", "service", "price", "ambience")]
    + [("Hotels & Travel", "location"), ("Hotels & Travel", "amenities")],
    "Shopping": [
        ("Pets", "store"),
        ("Pets", "grooming"),
        ("Beauty & Spas", "hair"),
        ("Beauty & Spas", "nails"),
        ("Beauty & Spas", "booking"),
        ("Automotive", "dealership"),
    ],
    "Home Services": [("Automotive", a) for a in ("repair", "cost", "wait")]
    + [("Hotels & Travel", "room"), ("Hotels & Travel", "staff"), ("Health & Medical", "office")],
    "Active Life": [("Health & Medical", a) for a in ("dentist", "doctor", "care")]
    + [("Beauty & Spas", "massage"), ("Pets", "vet"), ("Pets", "boarding")],
}
for _public, _borrowed in BORROWED_ASPECTS.items():
    CATEGORY_ASPECTS[_public].update({f"{a} ({c})": CATEGORY_ASPECTS[c][a] for c, a in _borrowed})


SENTIMENT = {
    "negative": (
        "terrible awful rude dirty worst horrible disappointing disgusting slow unprofessional "
        "bland filthy ignored waste mediocre avoid nasty sloppy careless angry"
    ).split(),
    "mixed": (
        "okay decent average alright however although somewhat inconsistent reasonable "
        "typical fair acceptable ordinary passable"
    ).split(),
    "positive": (
        "amazing excellent friendly delicious clean wonderful fantastic best perfect awesome "
        "great love lovely recommend helpful professional fresh quick spotless outstanding"
    ).split(),
}
STARTERS = {
    "the": 20,
    "i": 12,
    "we": 10,
    "my": 7,
    "this": 8,
    "it": 8,
    "they": 6,
    "our": 5,
    "overall": 3,
    "honestly": 2,
    "also": 3,
    "so": 3,
    "if": 3,
    "when": 4,
    "there": 3,
    "everything": 3,
}
AFTER_COMMA = {
    "and": 20,
    "but": 12,
    "so": 8,
    "which": 6,
    "the": 8,
    "i": 6,
    "we": 5,
    "although": 3,
    "then": 4,
    "it": 5,
    "they": 4,
    "though": 2,
}
GLUE = "and was is were are with for but the to of in at very so really too that".split()


@dataclass
class Lexicon:
    """Everything word-level the source is built from (so a tiny, enumerable one can be swapped in)."""

    aspects: dict[str, dict[str, list[str]]]
    sentiment: dict[str, list[str]]
    general: dict[str, float]  # word -> count (general unigram)
    bigrams: dict[str, dict[str, float]]  # word -> {next word: count}
    starters: dict[str, float]
    after_comma: dict[str, float]
    glue: list[str]


def pydoc_lexicon() -> Lexicon:
    """The default lexicon: general words and bigrams counted in Python's docs (frozen: `distildp.data.public_text`)."""
    from distildp.data.public_text import frozen

    tables = frozen()
    return Lexicon(CATEGORY_ASPECTS, SENTIMENT, tables["general"], tables["bigrams"], STARTERS, AFTER_COMMA, GLUE)


def tiny_lexicon() -> Lexicon:
    """A handful of words so that every document of length <= 3 can be enumerated in a test."""
    return Lexicon(
        aspects={
            "Restaurants": {"food": ["pizza"], "service": ["waiter"]},
            "Hotels & Travel": {"room": ["bed"], "staff": ["valet"]},
        },
        sentiment={"negative": ["rude"], "mixed": [], "positive": ["great"]},
        general={"the": 3.0, "good": 1.0},
        bigrams={"the": {"good": 2.0, "the": 1.0}},
        starters={"the": 1.0, "good": 1.0},
        after_comma={"the": 1.0},
        glue=["the", "good"],
    )
