"""Offline prompt sources for drafter training data: templated chat instructions and Python stdlib code.

Nothing here comes from HumanEval (the benchmark's prompts): chat prompts are templates over topics, code
prompts are built from the interpreter's own standard library (function signatures and docstrings).
"""

from __future__ import annotations

import ast
import random
import sysconfig
from pathlib import Path

TOPICS = """photosynthesis; black holes; the French Revolution; compound interest; machine learning; climate change;
the water cycle; the Roman Empire; vaccines; electric cars; the stock market; plate tectonics; jazz music;
the immune system; renewable energy; the printing press; quantum computing; volcanoes; the human heart;
social media; coffee; the Great Wall of China; recycling; sleep; the internet; DNA; inflation; honey bees;
the Moon landing; meditation; chess; the Olympic Games; rainforests; artificial intelligence; democracy;
the Industrial Revolution; gravity; tea ceremonies; cryptography; the Renaissance; earthquakes; nutrition;
public speaking; time management; the solar system; electricity; ancient Egypt; bread baking; soccer;
friendship; urban gardening; the ocean tides; supply and demand; volunteering; the piano; photography;
hiking safety; the metric system; blockchain; the Silk Road; penguins; antibiotics; the theory of evolution;
budgeting; learning a new language; the Eiffel Tower; wind turbines; dinosaurs; the human brain; rainbows;
the Cold War; cloud computing; yoga; mountains; the periodic table; sharks; the Mona Lisa; traffic lights;
minimalism; bicycles; the Amazon river; opera; the immune response to allergies; credit cards; email etiquette;
recycling plastics; the history of writing; desert ecosystems; solar panels; pizza; job interviews; origami;
the speed of light; habits; libraries; the Moon's phases; coral reefs; airplanes; the Pythagorean theorem;
open source software; video games; the Nile; first aid; elephants; batteries; the scientific method;
glaciers; online privacy; mathematics education; the human skeleton; composting; smartphones; weather forecasts;
the Titanic; linear algebra; sorting algorithms; databases; operating systems; version control with git;
unit testing; recursion; hash tables; computer networks; the Python programming language; regular expressions""".split(
    ";"
)
TOPICS = [t.strip() for t in TOPICS]

CHAT_TEMPLATES = [
    "Explain {a} in simple terms.",
    "What are the main benefits and drawbacks of {a}?",
    "Write a short paragraph about {a}.",
    "Give me three interesting facts about {a}.",
    "How does {a} work?",
    "Summarize the history of {a} in a few sentences.",
    "Write a short poem about {a}.",
    "What is a common misconception about {a}?",
    "Compare {a} and {b}.",
    "Explain {a} to a ten-year-old.",
    "Write a short story that involves {a}.",
    "What should a beginner know about {a}?",
    "List five questions a student might ask about {a}, with short answers.",
    "Why is {a} important?",
    "Describe {a} in exactly three sentences.",
    "Write an email to a friend recommending they learn about {a}.",
]

MATH_TEMPLATES = [
    "A train travels {x} km in {y} hours. What is its average speed? Explain step by step.",
    "If I buy {x} apples at {y} dollars each and pay with a 100 dollar bill, how much change do I get?",
    "What is {x} multiplied by {y}? Show your work.",
    "A rectangle is {x} cm long and {y} cm wide. What are its area and perimeter?",
    "Solve for n: {x} * n + {y} = {z}.",
    "What is {x} percent of {z}?",
]

CODE_TASKS = [
    "reverses a string",
    "checks whether a number is prime",
    "returns the n-th Fibonacci number",
    "counts the vowels in a string",
    "merges two sorted lists",
    "removes duplicates from a list while keeping order",
    "computes the factorial of n",
    "flattens a nested list",
    "finds the most common word in a text",
    "checks whether a string is a palindrome",
    "converts Celsius to Fahrenheit",
    "computes the median of a list",
    "returns the greatest common divisor of two integers",
    "transposes a matrix given as a list of lists",
    "parses a CSV line into fields",
    "groups words by their first letter",
    "implements binary search",
    "rotates a list by k positions",
    "validates an email address with a simple rule",
    "computes the running sum of a list",
    "counts the words in a file",
    "returns all permutations of a string",
    "implements bubble sort",
    "checks if two strings are anagrams",
    "converts a Roman numeral to an integer",
    "finds the second largest number in a list",
    "sums the digits of an integer",
    "chunks a list into pieces of size n",
    "returns the intersection of two lists",
    "implements a stack class with push and pop",
]
CODE_TEMPLATES = [
    "Write a Python function that {task}.",
    "Write a Python function that {task}. Include a docstring and an example.",
    "How do I write a Python program that {task}?",
    "Implement, in Python, a function which {task}, and explain how it works.",
]


def chat_prompts(rng: random.Random) -> list[str]:
    """Every chat template over every topic (pairs for the comparison template), plus math word problems."""
    prompts = [t.format(a=a, b=rng.choice(TOPICS)) for t in CHAT_TEMPLATES for a in TOPICS]
    for t in MATH_TEMPLATES:
        for _ in range(40):
            prompts.append(t.format(x=rng.randint(2, 99), y=rng.randint(2, 40), z=rng.randint(100, 999)))
    prompts += [t.format(task=task) for t in CODE_TEMPLATES for task in CODE_TASKS]
    return prompts


def stdlib_files() -> list[Path]:
    """The interpreter's pure-Python standard library sources (no site-packages), sorted."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def stdlib_functions(files: list[Path], limit: int, rng: random.Random) -> list[tuple[str, str]]:
    """(signature line, docstring) of documented top-level/method functions, sampled from `files`."""
    found: list[tuple[str, str]] = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                doc = ast.get_docstring(node)
                if doc and 40 <= len(doc) <= 600:
                    found.append((f"def {node.name}({ast.unparse(node.args)}):", doc))
    rng.shuffle(found)
    return found[:limit]


def code_prompts(functions: list[tuple[str, str]]) -> list[tuple[str, bool]]:
    """Raw completions of a header + docstring, and chat requests for the function: (text, use_chat)."""
    out: list[tuple[str, bool]] = []
    for i, (sig, doc) in enumerate(functions):
        body = "\n".join("    " + line if line else "" for line in doc.splitlines())
        stub = f'{sig}\n    """\n{body}\n    """\n'
        if i % 3 == 0:
            out.append((stub, False))
        elif i % 3 == 1:
            out.append((f"Complete the following Python function:\n```python\n{stub}```", True))
        else:
            summary = doc.split("\n\n")[0].replace("\n", " ")
            out.append((f"Write a Python function `{sig[4:-1]}` that does the following: {summary}", True))
    return out


def generated_prompts(seed: int) -> list[tuple[str, bool]]:
    """The prompts the target answers for training data, (text, use_chat) in the order `seed` shuffles them:
    the chat and math prompts and the code prompts over 4,000 stdlib functions."""
    rng = random.Random(seed)
    items = [(t, True) for t in chat_prompts(rng)]
    items += code_prompts(stdlib_functions(stdlib_files(), 4000, rng))
    random.Random(seed).shuffle(items)
    return items
