"""Write data/prompts/hrv_probe.jsonl: neutral probe prompts for computing head relevance vectors (HRV).

HRV votes while the model draws ordinary scenes; the prompts only need to be varied and neutral. Each
prompt is `a photo of a {noun}.` over the everyday nouns below (our own list; ImageNet's class list,
which HRV used, ships with torchvision, which this project does not install), in a seeded order.
Run: python scripts/make_hrv_probe.py
"""

import json
import random
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOUNS = """
acorn accordion apron anchor antelope armchair ashtray avocado backpack badger bagel bagpipe balloon banjo
barrel basket bathtub beaver bee beetle bell belt bicycle binoculars birdhouse bison blanket blender boat
bonsai bookcase boot bottle bowl bracelet broom bucket buffalo bulldozer butterfly cabin cactus cake
calculator camel camera campfire candle canary canoe cardigan carousel carpet carriage cart castle caterpillar
cauliflower cello chair chandelier cheetah chess chimney chipmunk clock cloud coat cockroach coconut compass
cookie corn cottage cow crab crayon crocodile crown cup cupcake curtain cushion daisy dandelion desk dolphin
donkey doorbell dragonfly drawer dress drum duck eagle easel eggplant elephant envelope eraser fan faucet
feather fence ferry fireplace fishbowl flag flamingo flashlight flowerpot fountain frog garlic gazebo glove
goat goldfish goose gorilla grasshopper guitar hamburger hammock hamster harbor harmonica hat hedgehog helmet
hippo honey horse hourglass hummingbird igloo iguana jar jellyfish kangaroo kayak kettle key kitten koala
ladder ladybug lamp lantern laptop lemon leopard lighthouse lion lizard lobster lock lollipop mailbox mango
mask mattress microscope mirror mitten mop mosquito motorcycle mountain mug mushroom napkin necklace nest
notebook octopus orchid ostrich otter oven owl padlock paintbrush pajamas palm pan panda parrot peacock peanut
pelican pencil penguin pepper piano pickle pig pillow pineapple pitcher pizza plate platypus plum pony popcorn
porcupine postcard pot pretzel pumpkin puppy quilt rabbit raccoon radio raft rainbow raspberry rhinoceros
ribbon rocket rollerskate rooster rug saddle sailboat salad sandal sandcastle saxophone scarf scooter seal
seashell sheep shell shoe skateboard skunk sled slipper snail snowman sock sofa spatula spider sponge squirrel
stapler starfish statue stool strawberry submarine suitcase swan sweater swing table tambourine teapot
telescope tent thermos tiger toaster tomato toothpaste tortoise towel tractor trampoline tricycle trumpet
tulip turkey turtle typewriter umbrella unicycle vase violin volcano waffle wagon walnut walrus wardrobe
watermelon whale wheelbarrow whistle windmill wolf woodpecker xylophone yacht zebra
""".split()


def article(noun: str) -> str:
    vowel_sound = noun[0] in "aeiou" and not noun.startswith("uni")
    return ("an " if vowel_sound else "a ") + noun


def main(seed: int = 0) -> None:
    if len(set(NOUNS)) != len(NOUNS):
        raise ValueError("duplicate nouns in the probe list")
    nouns = sorted(NOUNS)
    random.Random(seed).shuffle(nouns)
    lines = [json.dumps({"id": f"probe_{i:03d}", "prompt": f"a photo of {article(n)}.", "words": [n]})
             for i, n in enumerate(nouns)]
    out = ROOT / "data/prompts/hrv_probe.jsonl"
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {len(lines)} probe prompts to {out}")


if __name__ == "__main__":
    main()
