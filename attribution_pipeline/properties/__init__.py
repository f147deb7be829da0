"""Global properties of a generated image set, the utilities of the contributor game.

``classifier`` (reference classifier of contributors), ``quality`` (−FID with clean-fid's math),
``diversity`` (entropy of predicted contributors, bits) and ``registry`` (name → property, the
``PropertyContext`` of instruments, ``score_properties``).
"""
