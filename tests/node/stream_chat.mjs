// One streamed chat completion through the official openai Node SDK, over a Unix socket or
// TCP; prints what the app saw as one JSON line. Usage: node stream_chat.mjs URL MESSAGES_JSON [SOCKET]
import OpenAI from "openai";
import { Agent, fetch } from "undici";

const [baseURL, messagesJson, socketPath] = process.argv.slice(2);
const options = { baseURL, apiKey: "unused", maxRetries: 0, fetch };
if (socketPath) {
  options.fetchOptions = { dispatcher: new Agent({ connect: { socketPath } }) };
}
const client = new OpenAI(options);
let text = "";
let finish = null;
try {
  const stream = await client.chat.completions.create({
    model: "sim-1",
    messages: JSON.parse(messagesJson),
    stream: true,
  });
  for await (const chunk of stream) {
    const choice = chunk.choices[0];
    text += choice?.delta?.content ?? "";
    finish = choice?.finish_reason ?? finish;
  }
  console.log(JSON.stringify({ raised: false, text, finish }));
} catch (err) {
  console.log(JSON.stringify({
    raised: true, text, finish, error: err.constructor.name, code: err.code ?? null,
    type: err.type ?? null, message: err.message,
  }));
}
