"""The course: notebooks as typed, parameterised programs (`notebooks`), exercise checks (`exercises`,
`dp_exercises`, `model_exercises`), autograding with otter (`grading`) and the tutorial as static HTML (`book`).
"""
