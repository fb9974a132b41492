"""Reading a JSON file of the pipeline (run records, indexes) with its path in any error."""
import json


def read_json(path):
    """A JSON file; one that cannot be read as JSON is named in the error."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except ValueError as error:        # JSONDecodeError and UnicodeDecodeError
        raise ValueError(f"{path}: not readable as JSON ({error})") from error
