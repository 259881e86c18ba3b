// Validate an AsyncAPI document with the official parser (@asyncapi/parser, pinned in
// package-lock.json) and print what it found as one JSON object on stdout.
//
// Why a script of our own instead of the AsyncAPI CLI: the parser is the part every
// AsyncAPI tool shares (generator, studio, CLI), it installs from one pinned lockfile
// without downloading anything else, and its diagnostics come back as data the tests
// can assert on ("0 errors, 0 warnings") rather than as text to scrape.
//
// Usage: node validate.mjs FILE     (a .json or .yaml document)
//        node validate.mjs -        (the document on stdin)
// Exit:  0 no error and no warning; 1 at least one error or warning; 2 cannot run.
// Output: {"valid", "errors", "warnings", "diagnostics": [...], "problems": [...],
//          "channels": [...], "operations": [...]}.
//
// "problems" are what the parser does not check (3.x) and this script does, on the
// document the parser resolved: every message example validates against the message's
// payload and headers schemas (JSON Schema draft 07, as AsyncAPI Schema is), and every
// {variable} in a channel address has a parameter and back. A problem fails like an
// error. "channels"/"operations" are the document as the parser understood it, so a
// caller can check the rest (e.g. that each address is the real topic or queue).

import { readFile } from "node:fs/promises";
import { Parser, DiagnosticSeverity } from "@asyncapi/parser";
import Ajv from "ajv";
import addFormats from "ajv-formats";

const SEVERITY = {
  [DiagnosticSeverity.Error]: "error",
  [DiagnosticSeverity.Warning]: "warning",
  [DiagnosticSeverity.Information]: "info",
  [DiagnosticSeverity.Hint]: "hint",
};

async function readInput(arg) {
  if (arg === "-") {
    const chunks = [];
    for await (const chunk of process.stdin) chunks.push(chunk);
    return Buffer.concat(chunks).toString("utf8");
  }
  return readFile(arg, "utf8");
}

// Schemas as the parser resolved them ($refs inlined), minus the parser's own annotations.
function plain(schema) {
  return JSON.parse(
    JSON.stringify(schema.json(), (key, value) => (key.startsWith("x-parser-") ? undefined : value)),
  );
}

function exampleProblems(document) {
  const ajv = new Ajv({ strict: false, allErrors: true });
  addFormats(ajv);
  const problems = [];
  for (const message of document.messages().all()) {
    const parts = { payload: message.payload(), headers: message.headers() };
    message.examples().all().forEach((example, index) => {
      for (const [part, schema] of Object.entries(parts)) {
        const value = example[part]();
        if (value === undefined) continue;
        if (!schema) {
          problems.push(`message ${message.id()}: example ${index} has ${part} but no schema`);
          continue;
        }
        const validate = ajv.compile(plain(schema));
        if (!validate(value)) {
          const why = validate.errors.map((e) => `${e.instancePath || "/"} ${e.message}`);
          problems.push(`message ${message.id()}: example ${index} ${part}: ${why.join("; ")}`);
        }
      }
    });
  }
  return problems;
}

function addressProblems(document) {
  const problems = [];
  for (const channel of document.channels().all()) {
    const address = channel.address();
    if (address === null || address === undefined) continue; // dynamic: no address at all
    const variables = new Set([...address.matchAll(/\{([^{}]*)\}/g)].map((m) => m[1]));
    const parameters = new Set(channel.parameters().all().map((p) => p.id()));
    for (const name of variables) {
      if (!parameters.has(name)) {
        problems.push(`channel ${channel.id()}: address ${address} uses {${name}} without a parameter`);
      }
    }
    for (const name of parameters) {
      if (!variables.has(name)) {
        problems.push(`channel ${channel.id()}: parameter ${name} is not in address ${address}`);
      }
    }
  }
  return problems;
}

function summary(document) {
  if (!document) return { channels: [], operations: [] };
  const channels = document.channels().all().map((channel) => ({
    id: channel.id(),
    address: channel.address(),
    parameters: channel.parameters().all().map((p) => p.id()),
    messages: channel.messages().all().map((m) => m.id()),
    bindings: channel.bindings().all().map((b) => b.protocol()),
  }));
  const operations = document.operations().all().map((operation) => ({
    id: operation.id(),
    action: operation.action(),
    channels: operation.channels().all().map((c) => c.id()),
    messages: operation.messages().all().map((m) => m.id()),
    bindings: operation.bindings().all().map((b) => b.protocol()),
  }));
  return { channels, operations };
}

async function main() {
  const arg = process.argv[2];
  if (!arg || process.argv.length > 3) {
    process.stderr.write("usage: node validate.mjs FILE|-\n");
    return 2;
  }
  let text;
  try {
    text = await readInput(arg);
  } catch (error) {
    process.stderr.write(`cannot read ${arg}: ${error.message}\n`);
    return 2;
  }
  const parser = new Parser();
  const { document, diagnostics } = await parser.parse(text, {
    source: arg === "-" ? undefined : arg,
  });
  const found = diagnostics.map((d) => ({
    severity: SEVERITY[d.severity] ?? String(d.severity),
    code: d.code,
    message: d.message,
    path: d.path,
  }));
  const errors = found.filter((d) => d.severity === "error").length;
  const warnings = found.filter((d) => d.severity === "warning").length;
  const problems = document ? [...exampleProblems(document), ...addressProblems(document)] : [];
  const valid = document !== undefined && errors === 0 && warnings === 0 && problems.length === 0;
  const report = { valid, errors, warnings, diagnostics: found, problems, ...summary(document) };
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
  return valid ? 0 : 1;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error) => {
    process.stderr.write(`validate.mjs failed: ${error.stack ?? error}\n`);
    process.exitCode = 2;
  },
);
