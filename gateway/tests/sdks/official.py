"""The providers' official Python SDKs, pointed at the gateway: run by gateway/tests/sdks.rs.

Each SDK is used as its README shows, with only the base URL and the API key changed (a keymeter key): OpenAI's
chat completions (whole and streamed), Responses (whole and streamed) and embeddings; Anthropic's messages (whole
and streamed); Google's generate_content (whole and streamed). Prints "ok" when every answer reads as expected.
"""

import os

import anthropic
import openai
from google import genai
from google.genai import types

base = os.environ["GATEWAY_URL"]
key = os.environ["GATEWAY_KEY"]
hello = [{"role": "user", "content": "Say hello"}]

client = openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0)
chat = client.chat.completions.create(model="gpt-4o", messages=hello, max_tokens=50)
assert chat.choices[0].message.content == "hello", chat
stream = client.chat.completions.create(model="gpt-4o", messages=hello, max_tokens=50, stream=True)
text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
assert text == "hi hi hi ", text
response = client.responses.create(model="gpt-5-mini", input="Say hello", max_output_tokens=600)
assert response.output_text == "hello", response
events = list(client.responses.create(model="gpt-5-mini", input="Say hello", max_output_tokens=600, stream=True))
assert events[-1].type == "response.completed", events[-1]
deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
assert deltas == "hi hi hi ", deltas
embedded = client.embeddings.create(model="text-embedding-3-small", input=["one text", "another"])
assert embedded.data[0].embedding == [0.25, -0.5, 0.125], embedded

claude = anthropic.Anthropic(base_url=base, api_key=key, max_retries=0)
message = claude.messages.create(model="claude-sonnet-4-5", max_tokens=300, messages=hello)
assert message.content[0].text == "hello", message
with claude.messages.stream(model="claude-sonnet-4-5", max_tokens=300, messages=hello) as stream:
    text = "".join(stream.text_stream)
assert text == "hi hi hi ", text

gemini = genai.Client(api_key=key, http_options=types.HttpOptions(base_url=base))
config = types.GenerateContentConfig(max_output_tokens=300)
answer = gemini.models.generate_content(model="gemini-2.5-flash", contents="Say hello", config=config)
assert answer.text == "hello", answer
chunks = gemini.models.generate_content_stream(model="gemini-2.5-flash", contents="Say hello", config=config)
text = "".join(c.text or "" for c in chunks)
assert text == "hi hi hi .", text

print("ok")
