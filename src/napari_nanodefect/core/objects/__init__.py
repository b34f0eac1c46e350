"""Per-object classification: crops and features of labelled objects, and the
random-forest / CNN object classifiers (Groschner et al. 2021, Zelenka et al. 2022)."""
