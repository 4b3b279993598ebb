"""The built-in world: scenes with known ground truth (:mod:`.scenes`), its downstream task files (:mod:`.tasks`),
and :func:`build_world`, which writes it all in the real formats users have (:mod:`.build`). Used by the trainer
and the demo; imports neither."""

from training.world.build import build_world, world_texts
from training.world.scenes import FEATURE_DIM, Scene, WorldGenerator, WorldStats, world_stats

__all__ = ["build_world", "world_texts", "FEATURE_DIM", "Scene", "WorldGenerator", "WorldStats", "world_stats"]
