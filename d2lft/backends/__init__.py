"""One package per framework, each with the same modules: data, models, train.

A backend package never imports the other backend.
"""
