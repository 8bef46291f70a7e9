"""Vocabularies of the synthetic shop: categories, subcategories and the words of titles.

Every top-level category has its own brands, adjectives, materials and uses, and every
subcategory its own nouns, so titles, descriptions and search queries carry a real text
signal (a "running shoes" query shares words with running-shoe titles, not with mugs).
Brands are invented. Plain tuples only: iteration order is fixed, which the generator's
byte-for-byte determinism relies on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Subcategory:
    name: str
    nouns: tuple[str, ...]
    base_price: float  # median unit price of the subcategory, before brand/noise factors


@dataclass(frozen=True)
class Category:
    name: str
    subcategories: tuple[Subcategory, ...]
    brands: tuple[str, ...]
    adjectives: tuple[str, ...]
    materials: tuple[str, ...]
    uses: tuple[str, ...]


def _s(name: str, nouns: str, price: float) -> Subcategory:
    return Subcategory(name, tuple(n.strip() for n in nouns.split(",")), price)


def _t(words: str) -> tuple[str, ...]:
    return tuple(w.strip() for w in words.split(","))


CATEGORIES: tuple[Category, ...] = (
    Category(
        "Electronics",
        (
            _s("Headphones", "headphones, earbuds, headset", 60.0),
            _s("Chargers & Cables", "charger, cable, power bank", 18.0),
            _s("Speakers", "speaker, soundbar", 80.0),
            _s("Smart Home", "smart plug, security camera, smart bulb", 35.0),
        ),
        _t("Voltiq, Sonora, Nexbeam, Auralis, Kiloton, Brightwire"),
        _t("wireless, portable, compact, noise cancelling, fast, waterproof, bluetooth, rechargeable"),
        _t("aluminium, plastic, braided nylon, silicone, glass"),
        _t("travel, the office, gaming, workouts, the living room"),
    ),
    Category(
        "Computers",
        (
            _s("Laptops", "laptop, notebook, chromebook", 650.0),
            _s("Keyboards & Mice", "keyboard, mouse, trackpad", 40.0),
            _s("Monitors", "monitor, display", 220.0),
            _s("Storage", "ssd, flash drive, hard drive", 70.0),
        ),
        _t("Corelogic, Pixelon, Bytewave, Quantix, Terabit, Nimbus"),
        _t("ultrathin, mechanical, ergonomic, curved, external, lightweight, backlit, gaming"),
        _t("aluminium, plastic, carbon fibre, magnesium"),
        _t("home office, students, gaming, programming, video editing"),
    ),
    Category(
        "Home & Kitchen",
        (
            _s("Cookware", "frying pan, saucepan, wok, casserole", 45.0),
            _s("Kitchen Appliances", "blender, toaster, kettle, coffee maker", 60.0),
            _s("Tableware", "plate set, mug, bowl, glasses", 22.0),
            _s("Bedding", "duvet, pillow, bed sheets", 50.0),
        ),
        _t("Casaluna, Hearthly, Cuisio, Nordhaven, Ovenbird, Linenfield"),
        _t("nonstick, stainless, ceramic, electric, cosy, dishwasher safe, classic, modern"),
        _t("stainless steel, cast iron, ceramic, bamboo, cotton, glass"),
        _t("everyday cooking, family dinners, breakfast, small kitchens, guests"),
    ),
    Category(
        "Furniture",
        (
            _s("Chairs", "office chair, armchair, bar stool", 140.0),
            _s("Tables", "desk, coffee table, dining table", 180.0),
            _s("Storage Furniture", "bookshelf, cabinet, dresser", 160.0),
            _s("Beds", "bed frame, mattress", 350.0),
        ),
        _t("Woodhollow, Arkivo, Sittra, Lumberline, Stilhus, Oakmere"),
        _t("solid, foldable, ergonomic, scandinavian, rustic, adjustable, minimalist, sturdy"),
        _t("oak, pine, walnut, metal, velvet, linen"),
        _t("small apartments, the home office, the bedroom, the living room"),
    ),
    Category(
        "Women's Fashion",
        (
            _s("Dresses", "dress, maxi dress, skirt", 55.0),
            _s("Tops", "blouse, top, tunic, cardigan", 35.0),
            _s("Women's Shoes", "sandals, heels, ankle boots, ballet flats", 70.0),
            _s("Bags", "handbag, tote bag, backpack, clutch", 60.0),
        ),
        _t("Elowen, Marisol, Vantelle, Corisande, Amberlyn, Solvey"),
        _t("floral, elegant, casual, summer, slim fit, vintage, oversized, striped"),
        _t("cotton, linen, silk, leather, denim, wool"),
        _t("summer days, the office, evenings out, weekends, travel"),
    ),
    Category(
        "Men's Fashion",
        (
            _s("Shirts", "shirt, polo shirt, t-shirt", 30.0),
            _s("Trousers", "jeans, chinos, trousers, shorts", 45.0),
            _s("Outerwear", "jacket, coat, parka, raincoat", 110.0),
            _s("Men's Shoes", "sneakers, loafers, boots", 85.0),
        ),
        _t("Hartwell, Brennick, Stoneridge, Caldor, Mavrik, Ashgrove"),
        _t("classic, slim fit, regular fit, casual, waterproof, formal, relaxed, padded"),
        _t("cotton, denim, wool, leather, suede, polyester"),
        _t("work, weekends, winter, travel, formal events"),
    ),
    Category(
        "Beauty",
        (
            _s("Skin Care", "moisturizer, serum, cleanser, face mask", 24.0),
            _s("Makeup", "lipstick, mascara, foundation, eyeshadow palette", 18.0),
            _s("Hair Care", "shampoo, conditioner, hair oil, hair mask", 14.0),
            _s("Fragrance", "perfume, eau de toilette, body mist", 55.0),
        ),
        _t("Lumiere, Velvetine, Aurabelle, Rosadora, Skinnova, Glossary"),
        _t("hydrating, matte, long lasting, gentle, vegan, radiant, nourishing, fragrance free"),
        _t("aloe vera, argan oil, shea butter, vitamin c, hyaluronic acid, rose water"),
        _t("dry skin, sensitive skin, daily use, night routines, curly hair"),
    ),
    Category(
        "Sports & Outdoors",
        (
            _s("Fitness", "yoga mat, dumbbells, resistance bands, kettlebell", 30.0),
            _s("Camping", "tent, sleeping bag, camping lantern, backpack", 90.0),
            _s("Cycling", "bike helmet, bike light, cycling gloves", 40.0),
            _s("Running", "running shoes, running shorts, running jacket", 65.0),
        ),
        _t("Peakstride, Trailforge, Kinetix, Summitra, Velocore, Ridgeway"),
        _t("lightweight, breathable, waterproof, non slip, durable, reflective, insulated, foldable"),
        _t("neoprene, ripstop nylon, mesh, rubber, merino wool, steel"),
        _t("home workouts, hiking, trail running, commuting, camping trips"),
    ),
    Category(
        "Toys & Games",
        (
            _s("Building Toys", "building set, building blocks, marble run", 35.0),
            _s("Board Games", "board game, jigsaw puzzle, card game", 25.0),
            _s("Dolls & Figures", "doll, action figure, plush toy", 20.0),
            _s("Outdoor Toys", "kite, water gun, scooter", 30.0),
        ),
        _t("Playloom, Brickwell, Tinkertop, Funfolk, Jollyjam, Wonderkit"),
        _t("educational, colourful, classic, family, creative, interactive, giant, mini"),
        _t("wood, plastic, plush fabric, cardboard, foam"),
        _t("kids aged 3+, family game night, birthdays, rainy days"),
    ),
    Category(
        "Books",
        (
            _s("Fiction", "novel, thriller, fantasy novel, mystery", 14.0),
            _s("Cookbooks", "cookbook, baking book, recipe book", 22.0),
            _s("Children's Books", "picture book, story book, activity book", 10.0),
            _s("Science & Nature", "science book, field guide, atlas", 25.0),
        ),
        _t("Inkwell Press, Lanternhouse, Paperkite, Quillstone, Bramble Books, Northstar"),
        _t("bestselling, illustrated, hardcover, paperback, award winning, complete, pocket, collector's"),
        _t("hardcover, paperback, spiral bound, board book"),
        _t("bedtime reading, home cooks, curious minds, holidays, book clubs"),
    ),
    Category(
        "Grocery",
        (
            _s("Coffee & Tea", "coffee beans, ground coffee, green tea, espresso pods", 12.0),
            _s("Snacks", "granola bars, crisps, cookies, trail mix", 6.0),
            _s("Pantry", "olive oil, pasta, basmati rice, honey", 8.0),
            _s("Beverages", "sparkling water, juice, energy drink", 5.0),
        ),
        _t("Goldfield, Harvest Row, Beanhaus, Meadowmill, Sunkissed, Terroir"),
        _t("organic, gluten free, fair trade, dark roast, sugar free, extra virgin, family size, spicy"),
        _t("arabica, whole grain, almond, cocoa, oat, citrus"),
        _t("breakfast, snacking, the pantry, office kitchens, picnics"),
    ),
    Category(
        "Pet Supplies",
        (
            _s("Dog Supplies", "dog food, dog leash, dog bed, chew toy", 28.0),
            _s("Cat Supplies", "cat litter, cat tree, cat food, scratching post", 25.0),
            _s("Aquarium", "fish tank, aquarium filter, fish food", 35.0),
            _s("Small Animals", "hamster cage, rabbit hutch, hay", 30.0),
        ),
        _t("Pawsome, Whiskerly, Tailwind, Furbish, Aquanest, Barkley"),
        _t("grain free, durable, washable, orthopedic, natural, adjustable, quiet, large"),
        _t("chicken, salmon, rope, plush, bamboo, glass"),
        _t("puppies, senior dogs, indoor cats, small apartments, daily feeding"),
    ),
    Category(
        "Garden",
        (
            _s("Garden Tools", "pruning shears, rake, trowel, garden hose", 25.0),
            _s("Plants & Seeds", "seed kit, planter, flower pot, compost", 15.0),
            _s("Outdoor Furniture", "patio chair, hammock, garden bench", 120.0),
            _s("Outdoor Lighting", "solar lights, string lights, lantern", 30.0),
        ),
        _t("Greenvale, Rootwise, Bloomcraft, Hedgerow, Sunpatch, Fernhill"),
        _t("heavy duty, weatherproof, solar powered, ergonomic, expandable, decorative, rust resistant, biodegradable"),
        _t("steel, teak, terracotta, rattan, recycled plastic, copper"),
        _t("balconies, vegetable gardens, patios, lawns, summer evenings"),
    ),
    Category(
        "Baby",
        (
            _s("Feeding", "baby bottle, high chair, bib set", 25.0),
            _s("Nursery", "crib, baby monitor, changing table", 140.0),
            _s("Diapering", "diapers, baby wipes, diaper bag", 20.0),
            _s("Strollers", "stroller, car seat, baby carrier", 220.0),
        ),
        _t("Snugglebee, Littlenest, Cradlewood, Babybloom, Tinytrek, Softpaws"),
        _t("anti colic, foldable, hypoallergenic, lightweight, convertible, soft, bpa free, travel"),
        _t("organic cotton, silicone, bamboo, beech wood, glass"),
        _t("newborns, toddlers, travel, night feeds, new parents"),
    ),
)

# Words that vary within a product line; shared by all categories.
VARIANTS: tuple[str, ...] = _t(
    "black, white, grey, navy, red, green, beige, pink, blue, small, medium, large, "
    "set of 2, pack of 3, 2024 edition, pro, mini, xl"
)

COUNTRIES: tuple[str, ...] = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "PL", "SE", "CA")
COUNTRY_WEIGHTS: tuple[float, ...] = (0.30, 0.14, 0.13, 0.10, 0.08, 0.07, 0.06, 0.05, 0.03, 0.04)
# UTC offsets a misconfigured tracker might stamp (the instant stays right: not an error).
OTHER_OFFSETS_MINUTES: tuple[int, ...] = (60, 120, -300, -480, 330, 540, -180, 600)

FIRST_NAMES: tuple[str, ...] = _t(
    "anna, ben, carla, david, emma, felix, giulia, hugo, ines, jonas, kim, lena, marco, nora, "
    "oscar, paula, quinn, rosa, sami, tara"
)
