"""Surface material codes of the synthetic facade (the ray caster shades by them, SceneGeometry
returns them per pixel, the mask writer marks glass)."""

# Surface materials (also the ``materials`` codes SceneGeometry returns).
SKY, GROUND, WALL, REVEAL, GLASS, DOOR, CONCRETE, METAL, STONE, ROOF = range(10)
MATERIAL_NAMES = ("sky", "ground", "wall", "reveal", "glass", "door", "concrete", "metal", "stone", "roof")
