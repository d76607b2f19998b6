"""The one markdown table writer of every report the project writes: evaluation summaries, the efficiency
benchmark and the model card. (Not a model file: saved folders never hold it.)"""


def markdown_table(header: list[str], rows: list[list]) -> str:
    """GitHub markdown: a header line, a separator, one line per row, each ending in a newline. Cells go through
    `str`, with `|` escaped and line breaks flattened so that no cell can break the table."""
    def cell(value) -> str:
        return str(value).replace("|", "\\|").replace("\n", " ")

    return "".join("| " + " | ".join(map(cell, line)) + " |\n" for line in [header, ["---"] * len(header), *rows])
