"""The pocket world (issue 12): a procedural world of objects and styles, small enough for a CPU, in
which the recipe's ablations have real, measurable effects.

- :mod:`.scene`: the objects (fish, house, tree, boat, ...) as filled shapes at a random pose;
- :mod:`.styles`: the style families (base styles for pretraining, held-out styles to transfer);
- :mod:`.dataset`: held-out styles in the competition layout, and the pretraining stream.

``python -m stylexfer.world sheet OUT.png`` draws every object in every style.
"""

from .scene import OBJECTS, Pose, part_map
from .styles import BASE_STYLES, HELD_OUT_STYLES, STYLES, Style, render

__all__ = ["OBJECTS", "Pose", "part_map", "STYLES", "BASE_STYLES", "HELD_OUT_STYLES", "Style", "render"]
