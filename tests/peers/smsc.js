#!/usr/bin/env node
// A small SMSC for Rassylka's SMPP tests, on npm's smpp server (tests/peers/install.sh).
//
//   node smsc.js [PORT] [SYSTEM_ID] [PASSWORD]
//
// PORT 0 (the default) picks a free port. SYSTEM_ID and PASSWORD default to $SMSC_SYSTEM_ID and
// $SMSC_PASSWORD, else "rassylka" and "secret". It listens on 127.0.0.1 and writes one JSON
// object per line on stdout, the first {"event": "listening", "port": N}; then one per thing it
// sees (connect, bind, submit_sm, enquire_link, deliver_sm_resp, unbind, close, ...), so tests
// can count at the peer. It exits when its stdin closes, so it never outlives the tests.
//
// bind_transceiver: another system_id gets ESME_RBINDFAIL, another password ESME_RINVPASWD; both
// close the connection. A bound session gets one enquire_link from the server at once.
//
// submit_sm: the verdict depends on the last two digits of destination_addr:
//   11  ESME_RINVDSTADR           22  ESME_RTHROTTLED          66  ESME_RSYSERR
//   77  0x00000400 (vendor-specific, not in SMPP 3.4)
//   12  the second part of a concatenated message gets ESME_RTHROTTLED, others are accepted
//   33  accepted after 30 ms      44  never answered
//   55  the connection is closed at once, without an answer
//   88  the server sends unbind instead of an answer, then closes after unbind_resp
//   13  accepted; the receipt says UNDELIV err:001
//   14  the receipt (DELIVRD) goes first, the submit_sm_resp 150 ms after it
//   15  accepted; the receipt says EXPIRED err:002
//   16  accepted; the receipt is text only (no receipted_message_id/message_state TLVs)
//   17  accepted; the receipt says REJECTD err:003
//   18  accepted; first a receipt for an id this SMSC never gave, then the real one
//   anything else: accepted at once.
// An accepted submit_sm gets a message_id and, 10 ms later, a delivery receipt (deliver_sm with
// esm_class 0x04, receipted_message_id and message_state) that is logged with its answer.
// Every submit_sm is logged with its short_message (and message_payload, or null) in hex and
// "outstanding": how many of the session's submit_sm were unanswered when it arrived, itself
// included (the client's window).
//
// SIGUSR2 closes every connection at once.
// A line "mo {JSON}" on stdin sends a mobile-originated deliver_sm (esm_class 0) on the newest
// bound session: JSON {"source_addr", "source_addr_ton", "destination_addr", "data_coding",
// "short_message" (hex), "message_payload" (hex, optional)}; logged as {"event": "mo", ...}
// and its answer as {"event": "mo_resp", "tag", "status"} ("tag" is echoed from the JSON).
// A line "throttle on" on stdin makes every submit_sm get ESME_RTHROTTLED until "throttle off"
// (an SMSC over its limit for a while: the chaos suite).
//
// For benchmarks (the tests set none of these, and get the behaviour above):
//   SMSC_LOG             all (the default): every line above; receipts: only "listening" and
//                        one {"event": "receipt", "message_id", "at"} per receipt sent, "at" its
//                        wall-clock time in ms since the epoch; none: only "listening" and stats
//   SMSC_RECEIPT_DELAY_MS  ms from a submit_sm_resp to its receipt (default 10)
// A line "stats" on stdin prints {"event": "stats", ...}: submit_sm seen, accepted, refused,
// destinations (distinct destination_addr accepted), repeated (accepted submits to a destination
// already accepted), receipts (deliver_sm sent), receipts_acked (deliver_sm_resp OK),
// receipts_refused (any other status), sessions. A line "reset" zeroes them; "log MODE" sets
// SMSC_LOG from then on.
'use strict';

const smpp = require('smpp');

// Keep short_message and message_payload as the octets that came: the tests decode and
// reassemble them.
delete smpp.commands.submit_sm.params.short_message.filter;
delete smpp.tlvs.message_payload.filter;

const port = Number(process.argv[2] || 0);
const systemId = process.argv[3] || process.env.SMSC_SYSTEM_ID || 'rassylka';
const password = process.argv[4] || process.env.SMSC_PASSWORD || 'secret';

const VENDOR_STATUS = 0x00000400;
const DELAY_MS = 30;
const RECEIPT_DELAY_MS = Number(process.env.SMSC_RECEIPT_DELAY_MS || 10);
let LOG_ALL;
let LOG_RECEIPTS;
function setLog(mode) {
  LOG_ALL = mode === 'all';
  LOG_RECEIPTS = mode === 'receipts';
}
setLog(process.env.SMSC_LOG || 'all');

let counts;
let destinations;
function resetCounts() {
  counts = {
    submits: 0, accepted: 0, refused: 0, repeated: 0,
    receipts: 0, receipts_acked: 0, receipts_refused: 0, sessions: 0,
  };
  destinations = new Set();
}
resetCounts();

let nextSession = 0;
const boundSessions = [];
let nextMessageId = 0x5a000;

function log(event, fields) {
  process.stdout.write(JSON.stringify(Object.assign({ event: event }, fields)) + '\n');
}

// A per-PDU line: only when logging all (SMSC_LOG); ``fields`` is built only then.
function trace(event, fields) {
  if (LOG_ALL) log(event, typeof fields === 'function' ? fields() : fields);
}

function smppDate(date) {
  const two = (n) => String(n).padStart(2, '0');
  return (
    two(date.getUTCFullYear() % 100) + two(date.getUTCMonth() + 1) + two(date.getUTCDate()) +
    two(date.getUTCHours()) + two(date.getUTCMinutes())
  );
}

let throttling = false;

function verdictFor(pdu) {
  if (throttling) return { name: 'throttled', status: smpp.ESME_RTHROTTLED };
  const suffix = String(pdu.destination_addr).slice(-2);
  const udh = (pdu.esm_class & 0x40) && pdu.short_message.length >= 6 ? pdu.short_message : null;
  switch (suffix) {
    case '11': return { name: 'invalid-destination', status: smpp.ESME_RINVDSTADR };
    case '22': return { name: 'throttled', status: smpp.ESME_RTHROTTLED };
    case '66': return { name: 'system-error', status: smpp.ESME_RSYSERR };
    case '77': return { name: 'vendor-status', status: VENDOR_STATUS };
    case '12':
      if (udh && udh[5] === 2) return { name: 'second-part-throttled', status: smpp.ESME_RTHROTTLED };
      return { name: 'accepted', status: 0 };
    case '33': return { name: 'delayed', status: 0, delay: DELAY_MS };
    case '44': return { name: 'silent' };
    case '55': return { name: 'drop' };
    case '88': return { name: 'unbind' };
    case '13': return { name: 'undeliverable', status: 0, receipt: 'UNDELIV' };
    case '14': return { name: 'receipt-first', status: 0, receiptFirst: true };
    case '15': return { name: 'expires', status: 0, receipt: 'EXPIRED' };
    case '16': return { name: 'text-receipt', status: 0, textOnly: true };
    case '17': return { name: 'rejected', status: 0, receipt: 'REJECTD' };
    case '18': return { name: 'stray-receipt', status: 0, stray: true };
    default: return { name: 'accepted', status: 0 };
  }
}

const server = smpp.createServer(function (session) {
  const id = ++nextSession;
  let bound = false;
  let outstanding = 0;
  counts.sessions += 1;
  session.on('error', (error) => trace('error', { session: id, error: String(error) }));
  session.on('close', () => trace('close', { session: id }));
  session.on('unknown', (pdu) => {
    trace('unknown', { session: id, command_id: pdu.command_id });
    session.send(pdu.response());
  });
  trace('connect', { session: id });

  session.on('bind_transceiver', (pdu) => {
    let status = 0;
    if (pdu.system_id !== systemId) status = smpp.ESME_RBINDFAIL;
    else if (pdu.password !== password) status = smpp.ESME_RINVPASWD;
    trace('bind', {
      session: id,
      system_id: pdu.system_id,
      password: pdu.password,
      system_type: pdu.system_type,
      interface_version: pdu.interface_version,
      status: status,
    });
    if (status) {
      session.send(pdu.response({ command_status: status }), () => session.close());
      return;
    }
    bound = true;
    boundSessions.push(session);
    session.on('close', () => {
      const index = boundSessions.indexOf(session);
      if (index >= 0) boundSessions.splice(index, 1);
    });
    session.send(pdu.response({ system_id: 'test-smsc' }));
    session.enquire_link({}, (resp) =>
      trace('enquire_link_resp', { session: id, status: resp.command_status }));
  });

  session.on('enquire_link', (pdu) => {
    trace('enquire_link', { session: id, sequence: pdu.sequence_number });
    session.send(pdu.response());
  });

  session.on('unbind', (pdu) => {
    trace('unbind', { session: id });
    session.send(pdu.response(), () => session.close());
  });

  session.on('submit_sm', (pdu) => {
    if (!bound) {
      session.send(pdu.response({ command_status: smpp.ESME_RINVBNDSTS }));
      return;
    }
    outstanding += 1;
    const verdict = verdictFor(pdu);
    const accepted = verdict.status === 0;
    const messageId = accepted ? (nextMessageId++).toString(16).toUpperCase() : null;
    counts.submits += 1;
    if (accepted) {
      counts.accepted += 1;
      const destination = String(pdu.destination_addr);
      if (destinations.has(destination)) counts.repeated += 1;
      else destinations.add(destination);
    } else if (verdict.status !== undefined) {
      counts.refused += 1;
    }
    trace('submit_sm', () => ({
      session: id,
      sequence: pdu.sequence_number,
      service_type: pdu.service_type,
      source_addr_ton: pdu.source_addr_ton,
      source_addr_npi: pdu.source_addr_npi,
      source_addr: pdu.source_addr,
      dest_addr_ton: pdu.dest_addr_ton,
      dest_addr_npi: pdu.dest_addr_npi,
      destination_addr: pdu.destination_addr,
      esm_class: pdu.esm_class,
      registered_delivery: pdu.registered_delivery,
      data_coding: pdu.data_coding,
      short_message: pdu.short_message.toString('hex'),
      message_payload: pdu.message_payload ? pdu.message_payload.toString('hex') : null,
      verdict: verdict.name,
      status: verdict.status === undefined ? null : verdict.status,
      message_id: messageId,
      outstanding: outstanding,
    }));
    if (verdict.name === 'silent') return;
    if (verdict.name === 'drop') {
      session.destroy();
      return;
    }
    if (verdict.name === 'unbind') {
      session.unbind({}, (resp) => {
        trace('unbind_resp', { session: id, status: resp.command_status });
        session.close();
      });
      return;
    }
    const answer = () => {
      outstanding -= 1;
      if (!accepted) {
        session.send(pdu.response({ command_status: verdict.status }));
        return;
      }
      if (verdict.receiptFirst) {
        sendReceipt(pdu, messageId, 'DELIVRD', verdict);
        setTimeout(() => session.send(pdu.response({ message_id: messageId })), 150);
        return;
      }
      session.send(pdu.response({ message_id: messageId }));
      if (verdict.stray) sendReceipt(pdu, 'STRAY' + messageId, 'DELIVRD', verdict);
      setTimeout(
        () => sendReceipt(pdu, messageId, verdict.receipt || 'DELIVRD', verdict),
        RECEIPT_DELAY_MS
      );
    };
    if (verdict.delay) setTimeout(answer, verdict.delay);
    else answer();
  });

  function sendReceipt(submit, messageId, stat, verdict) {
    const at = Date.now();
    const now = smppDate(new Date(at));
    const err = { DELIVRD: '000', UNDELIV: '001', EXPIRED: '002', REJECTD: '003' }[stat];
    const text =
      `id:${messageId} sub:001 dlvrd:${stat === 'DELIVRD' ? '001' : '000'} ` +
      `submit date:${now} done date:${now} stat:${stat} err:${err} text:receipt`;
    const state = {
      DELIVRD: smpp.MESSAGE_STATE.DELIVERED,
      UNDELIV: smpp.MESSAGE_STATE.UNDELIVERABLE,
      EXPIRED: smpp.MESSAGE_STATE.EXPIRED,
      REJECTD: smpp.MESSAGE_STATE.REJECTED,
    }[stat];
    const tlvs = verdict.textOnly ? {} : { receipted_message_id: messageId, message_state: state };
    const sent = session.deliver_sm(
      Object.assign({
        source_addr_ton: submit.dest_addr_ton,
        source_addr_npi: submit.dest_addr_npi,
        source_addr: submit.destination_addr,
        dest_addr_ton: submit.source_addr_ton,
        dest_addr_npi: submit.source_addr_npi,
        destination_addr: submit.source_addr,
        esm_class: smpp.ESM_CLASS.MC_DELIVERY_RECEIPT,
        data_coding: 0,
        short_message: Buffer.from(text, 'ascii'),
      }, tlvs),
      (resp) => {
        if (resp.command_status === 0) counts.receipts_acked += 1;
        else counts.receipts_refused += 1;
        trace('deliver_sm_resp', {
          session: id,
          message_id: messageId,
          status: resp.command_status,
        });
      }
    );
    if (sent) {
      counts.receipts += 1;
      if (LOG_RECEIPTS) log('receipt', { message_id: messageId, at: at });
      trace('deliver_sm', { session: id, message_id: messageId, stat: stat });
    }
  }
});

server.on('error', (error) => {
  log('error', { error: String(error) });
  process.exit(1);
});

process.on('SIGUSR2', () => {
  trace('drop_all', { sessions: server.sessions.length });
  for (const session of server.sessions.slice()) session.destroy();
});

function sendMobileOriginated(spec) {
  const session = boundSessions[boundSessions.length - 1];
  if (!session) {
    log('mo_resp', { tag: spec.tag, status: null, error: 'no bound session' });
    return;
  }
  const fields = {
    source_addr_ton: spec.source_addr_ton === undefined ? 1 : spec.source_addr_ton,
    source_addr_npi: 1,
    source_addr: spec.source_addr,
    dest_addr_ton: spec.dest_addr_ton === undefined ? 0 : spec.dest_addr_ton,
    dest_addr_npi: 1,
    destination_addr: spec.destination_addr,
    esm_class: spec.esm_class || 0,
    data_coding: spec.data_coding || 0,
    short_message: Buffer.from(spec.short_message || '', 'hex'),
  };
  if (spec.message_payload) fields.message_payload = Buffer.from(spec.message_payload, 'hex');
  log('mo', { tag: spec.tag, source_addr: spec.source_addr, destination_addr: spec.destination_addr });
  session.deliver_sm(fields, (resp) => log('mo_resp', { tag: spec.tag, status: resp.command_status }));
}

let command = '';
process.stdin.on('data', (chunk) => {
  command += chunk.toString('latin1');
  let newline;
  while ((newline = command.indexOf('\n')) >= 0) {
    const line = command.slice(0, newline).trim();
    command = command.slice(newline + 1);
    if (line === 'stats') {
      log('stats', Object.assign({ destinations: destinations.size }, counts));
    } else if (line === 'reset') {
      resetCounts();
    } else if (line === 'throttle on' || line === 'throttle off') {
      throttling = line === 'throttle on';
      log('throttle', { on: throttling });
    } else if (line.startsWith('mo ')) {
      sendMobileOriginated(JSON.parse(line.slice(3)));
    } else if (line.startsWith('log ')) {
      setLog(line.slice(4).trim());
    }
  }
});
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();

server.listen(port, '127.0.0.1', () => log('listening', { port: server.address().port }));
