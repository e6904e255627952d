"""What every layer stands on: the artifact store (`artifacts`) and what its manifests record (`manifests`),
data-parallel processes (`distributed`), whether the Hugging Face hub can be reached (`hub`), the names of the methods
the suite compares (`methods`) and the one checker of values against types that settings, notebook parameters and grid
files share (`values`).
"""
