"""Drives redial with the official `openai` Python SDK, as a Vapi-configured client would.

Run by the Rust test `sdk::the_official_openai_python_sdk_streams_through_redial`, which starts
redial and a mock upstream and passes their addresses in the environment:
REDIAL_BASE_URL (http://127.0.0.1:PORT/v1 or .../), REDIAL_API_KEY. Prints one JSON object with
what it observed; exits non-zero on any failure.
"""

import json
import os
import sys
import time

import openai


def main() -> None:
    base_url = os.environ["REDIAL_BASE_URL"]
    client = openai.OpenAI(base_url=base_url, api_key=os.environ["REDIAL_API_KEY"], max_retries=0)
    vapi = {
        "call": {"id": os.environ.get("REDIAL_CALL_ID", "sdk-call"), "assistantId": "asst-sdk",
                 "customer": {"number": "+14155550199"}},
        "customer": {"number": "+14155550199"},
        "metadata": {"tenant": "sdk"},
    }
    messages = [{"role": "system", "content": "You are a test."}, {"role": "user", "content": "Hi"}]

    started = time.monotonic()
    arrivals = []
    pieces = []
    finish = None
    stream = client.chat.completions.create(
        model="gpt-test", messages=messages, stream=True, extra_body=vapi
    )
    for chunk in stream:
        choice = chunk.choices[0]
        if choice.delta.content:
            arrivals.append(time.monotonic() - started)
            pieces.append(choice.delta.content)
        if choice.finish_reason:
            finish = choice.finish_reason

    completion = client.chat.completions.create(
        model="gpt-test", messages=messages, stream=False,
        extra_headers={"X-Call-Id": "sdk-generic-call"},
    )
    json.dump(
        {
            "pieces": pieces,
            "arrivals": arrivals,
            "finish": finish,
            "completion_text": completion.choices[0].message.content,
            "completion_finish": completion.choices[0].finish_reason,
            "sdk_version": openai.__version__,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    main()
