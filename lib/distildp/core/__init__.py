"""What every layer stands on: the artifact store (`artifacts`), data-parallel processes (`distributed`), whether the
Hugging Face hub can be reached (`hub`) and the names of the methods the suite compares (`methods`).
"""
