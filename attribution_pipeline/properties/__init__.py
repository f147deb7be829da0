"""Global properties of a generated image set, the utilities of the contributor game.

``classifier`` (reference classifier of contributors), ``quality`` (−FID with clean-fid's math),
``diversity`` (entropy of predicted contributors, bits) and ``registry`` (name → property, the
``PropertyContext`` of instruments, ``score_properties``).

The properties with instruments of their own (``inception``, ``embedding_diversity``,
``aesthetic``) register themselves with the registry when imported. They are imported here, so
any import from this package, ``properties.registry`` included, finds them registered; the
registry itself imports none of them (they import it: one direction, no cycle).
"""

from attribution_pipeline.properties import registry  # noqa: F401  (first: the plugins register into it)
from attribution_pipeline.properties import aesthetic, embedding_diversity, inception  # noqa: F401
