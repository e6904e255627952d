"""The private and public text: the built-in review source with its exact probabilities (`source`, its tables in
`source_tables`, its words in `lexicon`), the frozen public English (`public_text`), what a corpus is (`corpus`),
corpora by name (`loaders`: built-in, CSV folders in `csv_corpus`, the paper's hub datasets in `hub_corpora`), a
labelled corpus split by label into private and public parts (`label_split`), documents against the context
(`lengths`) and the secrets planted for the audit (`canaries`).
"""
