# Source: stanfordnlp/dspy docs/docs/learn/programming/tools.md (dspy.ReAct with get_weather and search_web).
import dspy


def get_weather(city: str) -> str:
    """Get the current weather for a city."""
    return f"The weather in {city} is sunny and 75°F"


def search_web(query: str) -> str:
    """Search the web for information."""
    return f"Search results for '{query}': [relevant information...]"


def build():
    return dspy.ReAct(signature="question -> answer", tools=[get_weather, search_web], max_iters=5)


TOOLS = [get_weather, search_web]  # registered by name by the test, as an operator would
SAMPLES = [{"question": "What's the weather like in Tokyo?"}, {"question": "Search for the tallest tower."}]
HELD_OUT = [{"question": "What's the weather like in Paris?"}]
