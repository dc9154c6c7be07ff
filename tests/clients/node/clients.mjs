// The openai Node SDK against the gateway, configured the way an app in a compose project is:
//   OPENAI_BASE_URL=http://127.0.0.1:8080/v1 OPENAI_API_KEY=<gateway key> node clients.mjs
// Prints one JSON object; tests/clients/test_openai_node.py checks it against the simulator.
import OpenAI from "openai";

if (!process.env.OPENAI_BASE_URL) {
  console.error("set OPENAI_BASE_URL to the gateway, e.g. http://127.0.0.1:8080/v1");
  process.exit(2);
}
const client = new OpenAI({ maxRetries: 0 });
const messages = [{ role: "user", content: "Would you switch to an e-bike?" }];
const out = {};

const { data: chat, request_id } = await client.chat.completions
  .create({ model: "mavera-1", messages })
  .withResponse();
out.chat = { text: chat.choices[0].message.content, request_id, usage: chat.usage };

let streamed = "";
const chunks = await client.chat.completions.create({ model: "mavera-1", messages, stream: true });
for await (const chunk of chunks) {
  streamed += chunk.choices[0]?.delta?.content ?? "";
}
out.chatStream = { text: streamed };

const helper = client.chat.completions.stream({ model: "mavera-1", messages });
let helperDeltas = "";
helper.on("content", (delta) => {
  helperDeltas += delta;
});
const final = await helper.finalChatCompletion();
out.chatStreamHelper = { deltas: helperDeltas, final: final.choices[0].message.content };

const response = await client.responses.create({ model: "mavera-1", input: "Trains or buses?" });
out.responses = { text: response.output_text, id: response.id };

const events = await client.responses.create({ model: "mavera-1", input: "Trains?", stream: true });
const types = [];
let deltas = "";
for await (const event of events) {
  types.push(event.type);
  if (event.type === "response.output_text.delta") deltas += event.delta;
}
out.responsesStream = { first: types[0], last: types.at(-1), deltas };

const rstream = client.responses.stream({ model: "mavera-1", input: "Bikes?" });
const finished = await rstream.finalResponse();
out.responsesStreamHelper = { text: finished.output_text };

try {
  // Undocumented body fields are sent as-is: here, the simulator's per-request script.
  await client.chat.completions.create({ model: "mavera-1", messages, mavera_sim: { status: 429 } });
  out.error = null;
} catch (error) {
  out.error = {
    rateLimit: error instanceof OpenAI.RateLimitError,
    status: error.status,
    code: error.code,
    requestId: error.requestID,
  };
}

console.log(JSON.stringify(out));
