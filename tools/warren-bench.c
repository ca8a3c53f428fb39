/*
 * warren-bench: a load generator for any AMQP 0-9-1 broker, built on rabbitmq-c.
 *
 * Producers and consumers are threads, each with its own connection and one
 * channel. Every body starts with a 16-byte header written by the producer:
 *
 *   offset 0  uint64  send time, CLOCK_MONOTONIC in ns (both ends run on one host)
 *   offset 8  uint16  producer id
 *   offset 10 uint48  sequence number of the message within its producer
 *
 * (native byte order: the header never leaves this machine). Producers encode
 * the basic.publish frames themselves and write many publishes per send call on
 * rabbitmq-c's socket (see publish_batched); --no-batch uses amqp_basic_publish,
 * which costs three send calls per message. Consumers compute
 * the latency of each delivery into a log-linear histogram and set one bit per
 * (producer, sequence) in a bitmap of their own; at the end the bitmaps of the
 * consumers of one queue are merged, which gives, per queue, how many messages
 * were lost and how many arrived more than once. Any loss, duplicate, malformed
 * body, nack, error or timeout makes the exit status non-zero.
 *
 * Topology (all names start with --queue-prefix; deleted at the end unless
 * --keep or --phase publish):
 *   default     N queues (--queues); producer p publishes to queue p % N through
 *               the default exchange, consumer c consumes from queue c % N.
 *   --fanout    one fanout exchange bound to the N queues; every producer
 *               publishes to the exchange; consumer c consumes from queue c % N.
 *   --dead-letter-ttl MS   one queue: producers publish to a source queue
 *               PREFIX-src with x-message-ttl MS that dead-letters (default
 *               exchange) into PREFIX-q0, from which the consumers consume.
 *   --connections N   no messages: opens N idle connections with one channel
 *               each, holds them for --hold seconds and reports the broker's
 *               RSS per connection when --broker-pid is given.
 *
 * Output: a readable summary on stdout, a progress line on stderr about once a
 * second, and exactly one line on stdout starting with "RESULT " followed by
 * key=value pairs. Run with --help for the options.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#if defined(__has_include)
#if __has_include(<rabbitmq-c/amqp.h>)
#define WB_NEW_RABBITMQ_HEADERS 1
#endif
#endif
#ifdef WB_NEW_RABBITMQ_HEADERS
#include <rabbitmq-c/amqp.h>
#include <rabbitmq-c/tcp_socket.h>
#else
#include <amqp.h>
#include <amqp_tcp_socket.h>
#endif

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HDR_SIZE 16
#define MAX_PRODUCERS 65535
#define MAX_SEQ ((uint64_t)1 << 48)
#define FRAME_MAX 131072
#define POLL_MS 100 /* how long a blocked worker waits before rechecking flags */

/* ------------------------------------------------------------------ config */

enum phase { PHASE_ALL, PHASE_PUBLISH, PHASE_CONSUME };

static struct config {
  const char *host;
  int port;
  const char *user, *password, *vhost;
  const char *scenario, *broker;
  char prefix[128];
  int producers, consumers, queues;
  uint64_t count;     /* total messages published over all producers (0 = none) */
  double duration;    /* seconds of publishing (0 = unbounded by time) */
  double rate;        /* msg/s per producer (0 = as fast as possible) */
  size_t size;        /* body size in bytes */
  bool persistent;    /* delivery-mode 2 and durable queues/exchange */
  unsigned confirm;   /* publisher confirm window (0 = no confirms) */
  unsigned prefetch;  /* basic.qos prefetch-count (0 = no basic.qos) */
  unsigned ack_every; /* manual ack every K deliveries, multiple=true (0 = no-ack) */
  bool fanout;
  bool consume_after;
  enum phase phase;
  bool keep;
  double timeout, idle_timeout, connect_retry;
  int connections; /* idle-connection mode when > 0 */
  double hold;
  long broker_pid;
  bool quiet;
  bool no_batch; /* one amqp_basic_publish per message instead of batched writes */
  long dead_letter_ttl; /* >= 0: publish to PREFIX-src with this TTL in ms, which
                           dead-letters into PREFIX-q0 (-1: off) */
} cfg = {
    .host = "127.0.0.1",
    .port = 5672,
    .user = "guest",
    .password = "guest",
    .vhost = "/",
    .scenario = "custom",
    .broker = "unknown",
    .producers = 1,
    .consumers = -1,
    .queues = 1,
    .count = 0,
    .size = 16,
    .timeout = 300,
    .idle_timeout = 10,
    .hold = 3,
    .dead_letter_ttl = -1,
};

/* ------------------------------------------------------------------ shared state */

static atomic_bool g_stop;          /* timeout, signal or fatal error: everyone stops */
static atomic_bool g_go;            /* producers may start publishing */
static atomic_bool g_producers_done; /* every producer finished; expected counts final */
static atomic_int g_errors;
static volatile sig_atomic_t g_signal;
static pthread_mutex_t g_gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_gate_cv = PTHREAD_COND_INITIALIZER;
static int64_t g_t0; /* process start, ns */

struct queue_state {
  char name[200];
  _Atomic uint64_t received; /* deliveries from this queue, all consumers */
  _Atomic uint64_t expected; /* valid once g_producers_done */
  uint64_t leftover;         /* message_count from queue.delete-ok */
  bool deleted;
};
static struct queue_state *g_queues;
static char g_exchange[200];
static struct queue_state g_source; /* --dead-letter-ttl: the queue producers publish to */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double secs(int64_t ns) { return (double)ns / 1e9; }

static void errorf(char *buf, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, len, fmt, ap);
  va_end(ap);
}

/* ------------------------------------------------------------------ histogram */

/* Log-linear buckets over nanoseconds: values below 256 have their own bucket,
 * above that each power of two is split into 128 buckets (< 0.8% error). */
#define HIST_BUCKETS (256 + 56 * 128)

struct hist {
  uint64_t n[HIST_BUCKETS];
  uint64_t count, max;
};

static int hist_index(uint64_t v) {
  if (v < 256)
    return (int)v;
  int msb = 63 - __builtin_clzll(v);
  int shift = msb - 7;
  return 256 + (shift - 1) * 128 + (int)((v >> shift) - 128);
}

static uint64_t hist_mid(int idx) {
  if (idx < 256)
    return (uint64_t)idx;
  int shift = (idx - 256) / 128 + 1;
  uint64_t sub = (uint64_t)((idx - 256) % 128 + 128);
  return (sub << shift) + (((uint64_t)1 << shift) >> 1);
}

static void hist_add(struct hist *h, uint64_t v) {
  h->n[hist_index(v)]++;
  h->count++;
  if (v > h->max)
    h->max = v;
}

static void hist_merge(struct hist *into, const struct hist *from) {
  for (int i = 0; i < HIST_BUCKETS; i++)
    into->n[i] += from->n[i];
  into->count += from->count;
  if (from->max > into->max)
    into->max = from->max;
}

/* The value at quantile q (0..1) in ns, 0 if the histogram is empty. */
static uint64_t hist_quantile(const struct hist *h, double q) {
  if (h->count == 0)
    return 0;
  uint64_t rank = (uint64_t)(q * (double)h->count + 0.999999);
  if (rank < 1)
    rank = 1;
  uint64_t seen = 0;
  for (int i = 0; i < HIST_BUCKETS; i++) {
    seen += h->n[i];
    if (seen >= rank) {
      uint64_t v = hist_mid(i);
      return v > h->max ? h->max : v;
    }
  }
  return h->max;
}

/* ------------------------------------------------------------------ bitmaps */

struct bitmap {
  uint64_t *w;
  size_t nwords;
};

/* Sets bit `bit`, growing the map as needed; returns 1 if it was already set,
 * 0 if not, -1 if out of memory. */
static int bitmap_set(struct bitmap *b, uint64_t bit) {
  size_t word = (size_t)(bit >> 6);
  if (word >= b->nwords) {
    size_t n = b->nwords ? b->nwords : 64;
    while (n <= word)
      n *= 2;
    uint64_t *w = realloc(b->w, n * sizeof *w);
    if (!w)
      return -1;
    memset(w + b->nwords, 0, (n - b->nwords) * sizeof *w);
    b->w = w;
    b->nwords = n;
  }
  uint64_t m = (uint64_t)1 << (bit & 63);
  if (b->w[word] & m)
    return 1;
  b->w[word] |= m;
  return 0;
}

/* Makes room for `bits` bits up front so that the hot path does not grow. */
static bool bitmap_reserve(struct bitmap *b, uint64_t bits) {
  size_t n = (size_t)((bits + 63) / 64);
  if (n <= b->nwords)
    return true;
  uint64_t *w = realloc(b->w, n * sizeof *w);
  if (!w)
    return false;
  memset(w + b->nwords, 0, (n - b->nwords) * sizeof *w);
  b->w = w;
  b->nwords = n;
  return true;
}

/* ------------------------------------------------------------------ connections */

/* A readable description of an RPC reply that is not NORMAL. */
static void describe_reply(amqp_rpc_reply_t r, char *buf, size_t len) {
  switch (r.reply_type) {
  case AMQP_RESPONSE_NORMAL:
    snprintf(buf, len, "ok");
    return;
  case AMQP_RESPONSE_NONE:
    snprintf(buf, len, "missing RPC reply");
    return;
  case AMQP_RESPONSE_LIBRARY_EXCEPTION:
    snprintf(buf, len, "%s", amqp_error_string2(r.library_error));
    return;
  case AMQP_RESPONSE_SERVER_EXCEPTION:
    if (r.reply.id == AMQP_CONNECTION_CLOSE_METHOD) {
      amqp_connection_close_t *m = r.reply.decoded;
      snprintf(buf, len, "connection.close %u %.*s", m->reply_code, (int)m->reply_text.len,
               (char *)m->reply_text.bytes);
    } else if (r.reply.id == AMQP_CHANNEL_CLOSE_METHOD) {
      amqp_channel_close_t *m = r.reply.decoded;
      snprintf(buf, len, "channel.close %u %.*s", m->reply_code, (int)m->reply_text.len,
               (char *)m->reply_text.bytes);
    } else {
      snprintf(buf, len, "server method 0x%08x", r.reply.id);
    }
    return;
  }
  snprintf(buf, len, "unknown reply type");
}

/* Returns true if the last RPC on conn succeeded; otherwise writes
 * "what: reason" to err. */
static bool rpc_ok(amqp_connection_state_t conn, const char *what, char *err, size_t len) {
  amqp_rpc_reply_t r = amqp_get_rpc_reply(conn);
  if (r.reply_type == AMQP_RESPONSE_NORMAL)
    return true;
  char d[256];
  describe_reply(r, d, sizeof d);
  snprintf(err, len, "%.100s: %.200s", what, d);
  return false;
}

/* Opens a connection with channel 1 open. Retries for --connect-retry seconds
 * (used while a broker restarts). Returns NULL with err filled on failure. */
static amqp_connection_state_t bench_connect(char *err, size_t errlen) {
  int64_t deadline = now_ns() + (int64_t)(cfg.connect_retry * 1e9);
  for (;;) {
    amqp_connection_state_t conn = amqp_new_connection();
    if (!conn) {
      snprintf(err, errlen, "out of memory");
      return NULL;
    }
    amqp_socket_t *sock = amqp_tcp_socket_new(conn);
    struct timeval tv = {5, 0};
    struct timeval rpc_tv = {30, 0};
    int st = sock ? amqp_socket_open_noblock(sock, cfg.host, cfg.port, &tv) : AMQP_STATUS_NO_MEMORY;
    if (st != AMQP_STATUS_OK) {
      snprintf(err, errlen, "connect to %s:%d: %s", cfg.host, cfg.port, amqp_error_string2(st));
    } else {
      amqp_set_handshake_timeout(conn, &tv);
      amqp_set_rpc_timeout(conn, &rpc_tv);
      amqp_rpc_reply_t r = amqp_login(conn, cfg.vhost, 0, FRAME_MAX, 0, AMQP_SASL_METHOD_PLAIN,
                                      cfg.user, cfg.password);
      if (r.reply_type != AMQP_RESPONSE_NORMAL) {
        char d[256];
        describe_reply(r, d, sizeof d);
        snprintf(err, errlen, "login to %s:%d: %s", cfg.host, cfg.port, d);
      } else {
        amqp_channel_open(conn, 1);
        if (rpc_ok(conn, "channel.open", err, errlen))
          return conn;
      }
    }
    amqp_destroy_connection(conn);
    if (atomic_load(&g_stop) || now_ns() >= deadline)
      return NULL;
    struct timespec pause = {0, 200 * 1000 * 1000};
    nanosleep(&pause, NULL);
  }
}

/* Closes channel 1 and the connection (bounded by the RPC timeout), then frees it. */
static void bench_close(amqp_connection_state_t conn, bool graceful) {
  if (!conn)
    return;
  if (graceful) {
    struct timeval tv = {5, 0};
    amqp_set_rpc_timeout(conn, &tv);
    amqp_connection_close(conn, AMQP_REPLY_SUCCESS);
  }
  amqp_destroy_connection(conn);
}

/* ------------------------------------------------------------------ broker /proc */

/* utime+stime of a process in seconds, or -1. */
static double proc_cpu(long pid) {
  char path[64], buf[4096];
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* the command name may contain spaces */
  if (!p)
    return -1;
  unsigned long ut = 0, st = 0;
  /* fields after ')': state(3) ... utime(14) stime(15) */
  if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
    return -1;
  return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* A "VmRSS:" style field of /proc/PID/status in KiB, or -1. */
static long proc_status_kb(long pid, const char *field) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%ld/status", pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  long v = -1;
  size_t fl = strlen(field);
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, field, fl) == 0 && line[fl] == ':') {
      v = strtol(line + fl + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return v;
}

/* ------------------------------------------------------------------ producers */

struct producer {
  int id;
  int queue; /* target queue (direct mode) */
  uint64_t target; /* messages to publish (UINT64_MAX: until the duration ends) */
  pthread_t th;
  bool started, finished;
  _Atomic uint64_t sent;
  _Atomic uint64_t unconfirmed;
  uint64_t nacked;
  int64_t t_first, t_last; /* first publish, last publish (or last confirm) */
  bool failed;
  char err[320];
};

static struct producer *g_prod;

struct confirm_window {
  uint8_t *ring;
  uint64_t mask;
  uint64_t low;  /* lowest unconfirmed delivery tag */
  uint64_t next; /* tag of the next publish */
};

static void confirm_mark(struct producer *p, struct confirm_window *w, uint64_t tag,
                         bool multiple, bool nack) {
  if (tag >= w->next || (tag < w->low && !multiple))
    return;
  uint64_t from = multiple ? w->low : tag;
  for (uint64_t t = from; t <= tag; t++) {
    if (!w->ring[t & w->mask]) {
      w->ring[t & w->mask] = 1;
      if (nack)
        p->nacked++;
    }
  }
  while (w->low < w->next && w->ring[w->low & w->mask]) {
    w->ring[w->low & w->mask] = 0;
    w->low++;
  }
}

/* Reads one frame (waiting at most timeout_ms; 0 = only what is already
 * there) and applies it. Returns 1 after a frame, 0 on timeout, -1 on a fatal
 * error. */
static int producer_read(struct producer *p, amqp_connection_state_t conn,
                         struct confirm_window *w, int timeout_ms) {
  amqp_frame_t f;
  struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
  int st = amqp_simple_wait_frame_noblock(conn, &f, &tv);
  if (st == AMQP_STATUS_TIMEOUT)
    return 0;
  if (st != AMQP_STATUS_OK) {
    errorf(p->err, sizeof p->err, "producer %d: reading confirms: %s", p->id, amqp_error_string2(st));
    return -1;
  }
  if (f.frame_type == AMQP_FRAME_METHOD) {
    switch (f.payload.method.id) {
    case AMQP_BASIC_ACK_METHOD: {
      amqp_basic_ack_t *a = f.payload.method.decoded;
      confirm_mark(p, w, a->delivery_tag, a->multiple, false);
      break;
    }
    case AMQP_BASIC_NACK_METHOD: {
      amqp_basic_nack_t *a = f.payload.method.decoded;
      confirm_mark(p, w, a->delivery_tag, a->multiple, true);
      break;
    }
    case AMQP_CHANNEL_CLOSE_METHOD: {
      amqp_channel_close_t *m = f.payload.method.decoded;
      errorf(p->err, sizeof p->err, "producer %d: channel.close %u %.*s", p->id, m->reply_code,
             (int)m->reply_text.len, (char *)m->reply_text.bytes);
      return -1;
    }
    case AMQP_CONNECTION_CLOSE_METHOD: {
      amqp_connection_close_t *m = f.payload.method.decoded;
      errorf(p->err, sizeof p->err, "producer %d: connection.close %u %.*s", p->id,
             m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
      return -1;
    }
    default:
      break; /* connection.blocked/unblocked, basic.return: nothing to do */
    }
  }
  amqp_maybe_release_buffers(conn);
  atomic_store_explicit(&p->unconfirmed, w->next - w->low, memory_order_relaxed);
  return 1;
}

/* Waits until the confirm window has room for one more publish. Returns 0,
 * 1 if the run was stopped, -1 on a fatal error. */
static int window_wait(struct producer *p, amqp_connection_state_t conn,
                       struct confirm_window *w) {
  while (w->next - w->low >= cfg.confirm) {
    if (producer_read(p, conn, w, POLL_MS) < 0)
      return -1;
    if (atomic_load_explicit(&g_stop, memory_order_relaxed))
      return 1;
  }
  return 0;
}

/* What a publishing loop needs. */
struct pub {
  struct producer *p;
  amqp_connection_state_t conn;
  struct confirm_window *w;
  unsigned char *body; /* cfg.size bytes of filler; the first 16 are overwritten */
  int64_t start, end;  /* publishing start; end of --duration (INT64_MAX: none) */
  double interval;     /* ns between messages when paced, else 0 */
  uint64_t seq;        /* next sequence number = messages published so far */
  bool torn;           /* a frame was left half written: the connection is unusable */
};

/* When message seq is due (paced runs). */
static int64_t due_at(const struct pub *u, uint64_t seq) {
  return u->start + (int64_t)((double)seq * u->interval);
}

/* Waits until message u->seq may go: its time has come (paced) and the
 * confirm window has room. Sets *t to the time after the wait. Returns 0 to
 * publish, 1 to end publishing normally (duration over), 2 if stopped, -1 on
 * a fatal error. */
static int publish_gate(struct pub *u, int64_t *t) {
  *t = now_ns();
  if (u->interval > 0) {
    /* Steady pacing: message i is due at start + i * interval; sleep until
     * then, never send ahead of the schedule. */
    int64_t due = due_at(u, u->seq);
    if (due >= u->end)
      return 1;
    if (due > *t) {
      struct timespec ts = {due / 1000000000, due % 1000000000};
      while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
      *t = now_ns();
    }
  } else if (*t >= u->end) {
    return 1;
  }
  if (cfg.confirm) {
    /* At most `confirm` tags between the lowest unconfirmed and the next. */
    int rc = window_wait(u->p, u->conn, u->w);
    if (rc)
      return rc < 0 ? -1 : 2;
    *t = now_ns();
  }
  return 0;
}

/* The 16-byte body header: send time, then the 16-bit producer id and the
 * 48-bit sequence sharing the second word. */
static uint64_t idseq_of(const struct producer *p, uint64_t seq) {
  return (seq & (MAX_SEQ - 1)) | ((uint64_t)(uint16_t)p->id << 48);
}

/* Where producer p publishes: the fanout exchange, the dead-lettering source
 * queue, or its own queue through the default exchange. */
static const char *publish_exchange(void) { return cfg.fanout ? g_exchange : ""; }

static const char *publish_routing_key(const struct producer *p) {
  if (cfg.fanout)
    return "";
  if (cfg.dead_letter_ttl >= 0)
    return g_source.name;
  return g_queues[p->queue].name;
}

/* --no-batch: one amqp_basic_publish per message (rabbitmq-c writes each of
 * its three frames with a send call of its own). Returns 0 when done, 1 if
 * stopped, -1 on a fatal error. */
static int publish_single(struct pub *u) {
  struct producer *p = u->p;
  amqp_bytes_t exchange = amqp_cstring_bytes(publish_exchange());
  amqp_bytes_t rkey = amqp_cstring_bytes(publish_routing_key(p));
  amqp_basic_properties_t props;
  memset(&props, 0, sizeof props);
  if (cfg.persistent) {
    props._flags = AMQP_BASIC_DELIVERY_MODE_FLAG;
    props.delivery_mode = 2;
  }
  amqp_bytes_t b = {cfg.size, u->body};
  while (u->seq < p->target && !atomic_load_explicit(&g_stop, memory_order_relaxed)) {
    int64_t t;
    int rc = publish_gate(u, &t);
    if (rc == 1)
      break;
    if (rc)
      return rc < 0 ? -1 : 1;
    uint64_t idseq = idseq_of(p, u->seq);
    memcpy(u->body, &t, 8);
    memcpy(u->body + 8, &idseq, 8);
    int st = amqp_basic_publish(u->conn, 1, exchange, rkey, 0, 0, cfg.persistent ? &props : NULL, b);
    if (st != AMQP_STATUS_OK) {
      errorf(p->err, sizeof p->err, "producer %d: basic.publish: %s", p->id, amqp_error_string2(st));
      return -1;
    }
    u->seq++;
    atomic_store_explicit(&p->sent, u->seq, memory_order_relaxed);
    if (cfg.confirm) {
      u->w->next++;
      if ((u->seq & 63) == 0 && producer_read(p, u->conn, u->w, 0) < 0)
        return -1;
      atomic_store_explicit(&p->unconfirmed, u->w->next - u->w->low, memory_order_relaxed);
    }
  }
  return 0;
}

/* Batched publishing writes this much per send call at most (or one message,
 * if a message is larger). */
#define BATCH_BYTES (64 * 1024)

static unsigned char *put16(unsigned char *d, uint16_t v) {
  d[0] = (unsigned char)(v >> 8);
  d[1] = (unsigned char)v;
  return d + 2;
}

static unsigned char *put32(unsigned char *d, uint32_t v) {
  for (int i = 0; i < 4; i++)
    d[i] = (unsigned char)(v >> (24 - 8 * i));
  return d + 4;
}

static unsigned char *put64(unsigned char *d, uint64_t v) {
  for (int i = 0; i < 8; i++)
    d[i] = (unsigned char)(v >> (56 - 8 * i));
  return d + 8;
}

/* Frame header: type, channel 1, payload size. */
static unsigned char *put_frame_start(unsigned char *d, uint8_t type, uint32_t size) {
  *d++ = type;
  d = put16(d, 1);
  return put32(d, size);
}

/* The basic.publish method frame and the content header frame, which are the
 * same for every message of a producer. Returns their length (at most 600). */
static size_t encode_publish_prefix(unsigned char *d0, const char *exchange, const char *rkey) {
  size_t el = strlen(exchange), rl = strlen(rkey); /* both < 200: shortstr */
  unsigned char *d = d0;
  /* method frame: class 60 basic, method 40 publish, ticket 0, exchange,
   * routing key, bits mandatory=0 immediate=0 */
  d = put_frame_start(d, AMQP_FRAME_METHOD, (uint32_t)(4 + 2 + 1 + el + 1 + rl + 1));
  d = put16(d, 60);
  d = put16(d, 40);
  d = put16(d, 0);
  *d++ = (unsigned char)el;
  memcpy(d, exchange, el), d += el;
  *d++ = (unsigned char)rl;
  memcpy(d, rkey, rl), d += rl;
  *d++ = 0;
  *d++ = AMQP_FRAME_END;
  /* content header frame: class 60, weight 0, body size, property flags and,
   * when persistent, delivery-mode 2 */
  d = put_frame_start(d, AMQP_FRAME_HEADER, cfg.persistent ? 15 : 14);
  d = put16(d, 60);
  d = put16(d, 0);
  d = put64(d, cfg.size);
  if (cfg.persistent) {
    d = put16(d, AMQP_BASIC_DELIVERY_MODE_FLAG); /* 0x1000 */
    *d++ = 2;
  } else {
    d = put16(d, 0);
  }
  *d++ = AMQP_FRAME_END;
  return (size_t)(d - d0);
}

/* Writes buf[0..len) on fd: loops over short writes and waits for room when
 * the socket is non-blocking (rabbitmq-c 0.11 leaves it non-blocking after
 * connecting). Returns 0 when everything is written, 1 if the run was stopped
 * first, -1 on an error (errno set); *written = bytes written. */
static int write_all(int fd, const unsigned char *buf, size_t len, size_t *written) {
  size_t off = 0;
  int rc = 0;
  while (off < len) {
    ssize_t n = send(fd, buf + off, len - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += (size_t)n;
      continue;
    }
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (atomic_load_explicit(&g_stop, memory_order_relaxed)) {
        rc = 1;
        break;
      }
      struct pollfd pfd = {.fd = fd, .events = POLLOUT};
      if (poll(&pfd, 1, POLL_MS) < 0 && errno != EINTR) {
        rc = -1;
        break;
      }
      continue;
    }
    if (n == 0)
      errno = EPIPE;
    rc = -1;
    break;
  }
  *written = off;
  return rc;
}

/* Default: encodes the frames of many publishes into one buffer and writes it
 * with one send call on rabbitmq-c's socket. A batch holds whatever may go
 * now: at most BATCH_BYTES, at most what the confirm window allows in flight,
 * and when paced only the messages already due (so at 1000 msg/s each
 * message goes alone). Every message of a batch is stamped with the same send
 * time, taken after encoding, just before the write. rabbitmq-c still reads
 * the confirms; nothing else writes on the connection meanwhile (heartbeats
 * are off). Returns 0 when done, 1 if stopped, -1 on a fatal error. */
static int publish_batched(struct pub *u) {
  struct producer *p = u->p;
  int fd = amqp_get_sockfd(u->conn);
  int frame_max = amqp_get_frame_max(u->conn);
  if (fd < 0 || frame_max <= 8 + HDR_SIZE) {
    errorf(p->err, sizeof p->err, "producer %d: no socket or frame_max %d too small", p->id,
           frame_max);
    return -1;
  }
  size_t chunk = (size_t)frame_max - 8; /* body bytes per body frame */
  size_t nframes = (cfg.size + chunk - 1) / chunk;
  unsigned char prefix[640];
  size_t prefix_len = encode_publish_prefix(prefix, publish_exchange(), publish_routing_key(p));
  size_t msg_len = prefix_len + nframes * 8 + cfg.size;
  size_t cap = msg_len > BATCH_BYTES ? msg_len : BATCH_BYTES;
  size_t max_n = cap / msg_len;
  unsigned char *buf = malloc(cap);
  size_t *ends = malloc(max_n * sizeof *ends); /* offset past each message */
  int rc = 0;
  if (!buf || !ends) {
    errorf(p->err, sizeof p->err, "producer %d: out of memory", p->id);
    rc = -1;
    goto out;
  }
  /* The stamp of message i is at i * msg_len + stamp_off (all messages have
   * the same length). */
  size_t stamp_off = prefix_len + 7;
  while (u->seq < p->target && !atomic_load_explicit(&g_stop, memory_order_relaxed)) {
    int64_t t;
    int g = publish_gate(u, &t);
    if (g == 1)
      break;
    if (g) {
      rc = g < 0 ? -1 : 1;
      break;
    }
    uint64_t room = cfg.confirm ? cfg.confirm - (u->w->next - u->w->low) : UINT64_MAX;
    size_t n = 0;
    unsigned char *d = buf;
    while (n < max_n && n < room && u->seq + n < p->target) {
      if (n > 0 && u->interval > 0) {
        int64_t due = due_at(u, u->seq + n);
        if (due > t || due >= u->end)
          break;
      }
      memcpy(d, prefix, prefix_len);
      d += prefix_len;
      uint64_t idseq = idseq_of(p, u->seq + n);
      size_t left = cfg.size, off = 0;
      while (left > 0) {
        size_t c = left < chunk ? left : chunk;
        d = put_frame_start(d, AMQP_FRAME_BODY, (uint32_t)c);
        memcpy(d, u->body + off, c);
        if (off == 0)
          memcpy(d + 8, &idseq, 8); /* the stamp (bytes 0-7) is written below */
        d += c;
        *d++ = AMQP_FRAME_END;
        off += c;
        left -= c;
      }
      ends[n++] = (size_t)(d - buf);
    }
    t = now_ns();
    for (size_t i = 0; i < n; i++)
      memcpy(buf + i * msg_len + stamp_off, &t, 8);
    size_t written = 0;
    int wr = write_all(fd, buf, (size_t)(d - buf), &written);
    int err = errno;
    size_t done = 0; /* messages written completely */
    while (done < n && ends[done] <= written)
      done++;
    if (written != (done ? ends[done - 1] : 0))
      u->torn = true;
    u->seq += done;
    atomic_store_explicit(&p->sent, u->seq, memory_order_relaxed);
    if (cfg.confirm) {
      u->w->next += done;
      atomic_store_explicit(&p->unconfirmed, u->w->next - u->w->low, memory_order_relaxed);
    }
    if (wr < 0) {
      errorf(p->err, sizeof p->err, "producer %d: writing publishes: %s", p->id, strerror(err));
      rc = -1;
      break;
    }
    if (wr > 0) {
      rc = 1;
      break;
    }
    if (cfg.confirm) {
      /* Take in whatever confirms have arrived, without waiting. */
      int r;
      while ((r = producer_read(p, u->conn, u->w, 0)) > 0)
        ;
      if (r < 0) {
        rc = -1;
        break;
      }
    }
  }
out:
  free(buf);
  free(ends);
  return rc;
}

static void *producer_main(void *arg) {
  struct producer *p = arg;
  amqp_connection_state_t conn = bench_connect(p->err, sizeof p->err);
  struct confirm_window w = {0};
  struct pub u = {.p = p, .w = &w};
  bool graceful = false;
  if (!conn)
    goto fail;
  u.conn = conn;
  if (cfg.confirm) {
    amqp_confirm_select(conn, 1);
    if (!rpc_ok(conn, "confirm.select", p->err, sizeof p->err))
      goto fail;
    uint64_t n = 1;
    while (n < cfg.confirm)
      n *= 2;
    w.ring = calloc(n, 1);
    w.mask = n - 1;
    w.low = w.next = 1;
  }
  u.body = malloc(cfg.size);
  if (!u.body || (cfg.confirm && !w.ring)) {
    snprintf(p->err, sizeof p->err, "out of memory");
    goto fail;
  }
  for (size_t i = 0; i < cfg.size; i++)
    u.body[i] = (unsigned char)('a' + i % 26);

  /* Wait for the start signal. */
  pthread_mutex_lock(&g_gate_mu);
  p->started = true;
  pthread_cond_broadcast(&g_gate_cv);
  while (!atomic_load(&g_go) && !atomic_load(&g_stop))
    pthread_cond_wait(&g_gate_cv, &g_gate_mu);
  pthread_mutex_unlock(&g_gate_mu);

  u.start = now_ns();
  u.end = cfg.duration > 0 ? u.start + (int64_t)(cfg.duration * 1e9) : INT64_MAX;
  u.interval = cfg.rate > 0 ? 1e9 / cfg.rate : 0;
  p->t_first = u.start;
  int rc = cfg.no_batch ? publish_single(&u) : publish_batched(&u);
  if (rc < 0)
    goto fail;
  if (rc > 0)
    goto stopped;
  p->t_last = now_ns();
  if (cfg.confirm) {
    while (w.low < w.next) {
      if (producer_read(p, conn, &w, POLL_MS) < 0)
        goto fail;
      if (atomic_load(&g_stop))
        goto stopped;
    }
    p->t_last = now_ns();
  }
  graceful = true;
  goto out;
stopped:
  p->t_last = now_ns();
  graceful = !u.torn;
  goto out;
fail:
  p->failed = true;
  p->t_last = now_ns();
  atomic_fetch_add(&g_errors, 1);
  atomic_store(&g_stop, true);
  pthread_mutex_lock(&g_gate_mu);
  p->started = true;
  pthread_cond_broadcast(&g_gate_cv);
  pthread_mutex_unlock(&g_gate_mu);
out:
  bench_close(conn, graceful);
  free(w.ring);
  free(u.body);
  pthread_mutex_lock(&g_gate_mu);
  p->finished = true;
  pthread_mutex_unlock(&g_gate_mu);
  return NULL;
}

/* ------------------------------------------------------------------ consumers */

struct consumer {
  int id;
  int queue;
  pthread_t th;
  bool ready, finished;
  _Atomic uint64_t received;
  uint64_t dup;     /* duplicates seen by this consumer alone */
  uint64_t bad;     /* bodies that carry no valid header */
  struct bitmap *seen; /* one per producer */
  struct hist hist;
  int64_t t_start, t_first, t_last;
  bool failed, idle_stop;
  char err[320];
};

static struct consumer *g_cons;
static int g_ncons;

/* Producers whose messages reach queue q. */
static bool routes_to(int producer, int q) {
  return cfg.fanout || producer % cfg.queues == q;
}

static bool consumer_done(struct consumer *c, int64_t t, int64_t last_activity) {
  if (atomic_load_explicit(&g_stop, memory_order_relaxed))
    return true;
  if (!atomic_load_explicit(&g_producers_done, memory_order_acquire))
    return false;
  struct queue_state *q = &g_queues[c->queue];
  if (atomic_load_explicit(&q->received, memory_order_relaxed) >=
      atomic_load_explicit(&q->expected, memory_order_relaxed))
    return true;
  if (t - last_activity > (int64_t)(cfg.idle_timeout * 1e9)) {
    c->idle_stop = true;
    return true;
  }
  return false;
}

static void consumer_record(struct consumer *c, amqp_bytes_t body, int64_t t) {
  if (body.len < HDR_SIZE) {
    c->bad++;
    return;
  }
  int64_t sent;
  uint64_t idseq;
  memcpy(&sent, body.bytes, 8);
  memcpy(&idseq, (char *)body.bytes + 8, 8);
  unsigned pid = (unsigned)(idseq >> 48);
  uint64_t seq = idseq & (MAX_SEQ - 1);
  if ((int)pid >= cfg.producers || !routes_to((int)pid, c->queue)) {
    c->bad++;
    return;
  }
  int r = bitmap_set(&c->seen[pid], seq);
  if (r < 0) {
    c->bad++;
    return;
  }
  if (r > 0)
    c->dup++;
  hist_add(&c->hist, t > sent ? (uint64_t)(t - sent) : 0);
}

static void *consumer_main(void *arg) {
  struct consumer *c = arg;
  amqp_connection_state_t conn = bench_connect(c->err, sizeof c->err);
  bool graceful = false;
  if (!conn)
    goto fail;
  if (cfg.prefetch) {
    amqp_basic_qos(conn, 1, 0, (uint16_t)cfg.prefetch, 0);
    if (!rpc_ok(conn, "basic.qos", c->err, sizeof c->err))
      goto fail;
  }
  amqp_basic_consume(conn, 1, amqp_cstring_bytes(g_queues[c->queue].name), amqp_empty_bytes, 0,
                     cfg.ack_every == 0, 0, amqp_empty_table);
  if (!rpc_ok(conn, "basic.consume", c->err, sizeof c->err))
    goto fail;
  c->t_start = now_ns();
  pthread_mutex_lock(&g_gate_mu);
  c->ready = true;
  pthread_cond_broadcast(&g_gate_cv);
  pthread_mutex_unlock(&g_gate_mu);

  uint64_t unacked = 0, last_tag = 0;
  int64_t last_activity = now_ns();
  struct queue_state *q = &g_queues[c->queue];
  for (;;) {
    int64_t t = now_ns();
    if (consumer_done(c, t, last_activity))
      break;
    amqp_envelope_t env;
    struct timeval tv = {0, POLL_MS * 1000};
    amqp_maybe_release_buffers(conn);
    amqp_rpc_reply_t r = amqp_consume_message(conn, &env, &tv, 0);
    if (r.reply_type == AMQP_RESPONSE_NORMAL) {
      t = now_ns();
      if (c->t_first == 0)
        c->t_first = t;
      c->t_last = t;
      last_activity = t;
      consumer_record(c, env.message.body, t);
      atomic_store_explicit(&c->received, atomic_load_explicit(&c->received, memory_order_relaxed) + 1,
                            memory_order_relaxed);
      atomic_fetch_add_explicit(&q->received, 1, memory_order_relaxed);
      if (cfg.ack_every) {
        last_tag = env.delivery_tag;
        if (++unacked >= cfg.ack_every) {
          int st = amqp_basic_ack(conn, 1, last_tag, 1);
          if (st != AMQP_STATUS_OK) {
            amqp_destroy_envelope(&env);
            errorf(c->err, sizeof c->err, "consumer %d: basic.ack: %s", c->id, amqp_error_string2(st));
            goto fail;
          }
          unacked = 0;
        }
      }
      amqp_destroy_envelope(&env);
      continue;
    }
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION && r.library_error == AMQP_STATUS_TIMEOUT)
      continue;
    if (r.reply_type == AMQP_RESPONSE_LIBRARY_EXCEPTION &&
        r.library_error == AMQP_STATUS_UNEXPECTED_STATE) {
      /* A frame other than a delivery: read it and see whether it closes us. */
      amqp_frame_t f;
      struct timeval ftv = {1, 0};
      int st = amqp_simple_wait_frame_noblock(conn, &f, &ftv);
      if (st == AMQP_STATUS_TIMEOUT)
        continue;
      if (st != AMQP_STATUS_OK) {
        errorf(c->err, sizeof c->err, "consumer %d: %s", c->id, amqp_error_string2(st));
        goto fail;
      }
      if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_CHANNEL_CLOSE_METHOD) {
        amqp_channel_close_t *m = f.payload.method.decoded;
        errorf(c->err, sizeof c->err, "consumer %d: channel.close %u %.*s", c->id, m->reply_code,
               (int)m->reply_text.len, (char *)m->reply_text.bytes);
        goto fail;
      }
      if (f.frame_type == AMQP_FRAME_METHOD &&
          f.payload.method.id == AMQP_CONNECTION_CLOSE_METHOD) {
        amqp_connection_close_t *m = f.payload.method.decoded;
        errorf(c->err, sizeof c->err, "consumer %d: connection.close %u %.*s", c->id,
               m->reply_code, (int)m->reply_text.len, (char *)m->reply_text.bytes);
        goto fail;
      }
      if (f.frame_type == AMQP_FRAME_METHOD && f.payload.method.id == AMQP_BASIC_CANCEL_METHOD) {
        errorf(c->err, sizeof c->err, "consumer %d: the broker cancelled the consumer", c->id);
        goto fail;
      }
      continue;
    }
    char d[256];
    describe_reply(r, d, sizeof d);
    errorf(c->err, sizeof c->err, "consumer %d: %s", c->id, d);
    goto fail;
  }
  if (cfg.ack_every && unacked)
    amqp_basic_ack(conn, 1, last_tag, 1);
  graceful = true;
  goto out;
fail:
  c->failed = true;
  atomic_fetch_add(&g_errors, 1);
  atomic_store(&g_stop, true);
out:
  bench_close(conn, graceful);
  pthread_mutex_lock(&g_gate_mu);
  c->ready = true; /* unblocks the main thread's wait even on failure */
  c->finished = true;
  pthread_cond_broadcast(&g_gate_cv);
  pthread_mutex_unlock(&g_gate_mu);
  return NULL;
}

/* ------------------------------------------------------------------ topology */

/* --dead-letter-ttl: the source queue, whose messages expire after the TTL and
 * are dead-lettered through the default exchange into queue 0. */
static bool declare_source_queue(amqp_connection_state_t conn, bool passive, char *err,
                                 size_t len) {
  amqp_table_entry_t args[3];
  args[0].key = amqp_cstring_bytes("x-message-ttl");
  args[0].value.kind = AMQP_FIELD_KIND_I32;
  args[0].value.value.i32 = (int32_t)cfg.dead_letter_ttl;
  args[1].key = amqp_cstring_bytes("x-dead-letter-exchange");
  args[1].value.kind = AMQP_FIELD_KIND_UTF8;
  args[1].value.value.bytes = amqp_cstring_bytes("");
  args[2].key = amqp_cstring_bytes("x-dead-letter-routing-key");
  args[2].value.kind = AMQP_FIELD_KIND_UTF8;
  args[2].value.value.bytes = amqp_cstring_bytes(g_queues[0].name);
  amqp_table_t table = {3, args};
  amqp_queue_declare(conn, 1, amqp_cstring_bytes(g_source.name), passive, cfg.persistent, 0, 0,
                     table);
  char what[256];
  snprintf(what, sizeof what, "queue.declare %s", g_source.name);
  return rpc_ok(conn, what, err, len);
}

static bool declare_topology(amqp_connection_state_t conn, bool passive, char *err, size_t len) {
  if (cfg.fanout) {
    amqp_exchange_declare(conn, 1, amqp_cstring_bytes(g_exchange), amqp_cstring_bytes("fanout"),
                          passive, cfg.persistent, 0, 0, amqp_empty_table);
    if (!rpc_ok(conn, "exchange.declare", err, len))
      return false;
  }
  for (int i = 0; i < cfg.queues; i++) {
    amqp_queue_declare(conn, 1, amqp_cstring_bytes(g_queues[i].name), passive, cfg.persistent, 0,
                       0, amqp_empty_table);
    char what[256];
    snprintf(what, sizeof what, "queue.declare %s", g_queues[i].name);
    if (!rpc_ok(conn, what, err, len))
      return false;
    if (cfg.fanout && !passive) {
      amqp_queue_bind(conn, 1, amqp_cstring_bytes(g_queues[i].name), amqp_cstring_bytes(g_exchange),
                      amqp_empty_bytes, amqp_empty_table);
      if (!rpc_ok(conn, "queue.bind", err, len))
        return false;
    }
  }
  if (cfg.dead_letter_ttl >= 0 && !declare_source_queue(conn, passive, err, len))
    return false;
  return true;
}

/* Deletes queue q and records its leftover message count. */
static bool delete_queue(amqp_connection_state_t conn, struct queue_state *q, char *err,
                         size_t len) {
  amqp_queue_delete_ok_t *d = amqp_queue_delete(conn, 1, amqp_cstring_bytes(q->name), 0, 0);
  if (!rpc_ok(conn, "queue.delete", err, len))
    return false;
  q->leftover = d ? d->message_count : 0;
  q->deleted = true;
  return true;
}

/* Deletes the queues and the exchange on a fresh connection (the old one may
 * be closed by an error); records each queue's leftover message count. The
 * source queue goes first, so that nothing is dead-lettered into a deleted
 * queue. */
static void delete_topology(void) {
  char err[320];
  double saved = cfg.connect_retry;
  cfg.connect_retry = 0;
  amqp_connection_state_t conn = bench_connect(err, sizeof err);
  cfg.connect_retry = saved;
  if (!conn) {
    fprintf(stderr, "warren-bench: could not delete the queues: %s\n", err);
    return;
  }
  struct timeval tv = {10, 0};
  amqp_set_rpc_timeout(conn, &tv);
  bool ok = cfg.dead_letter_ttl < 0 || delete_queue(conn, &g_source, err, sizeof err);
  for (int i = 0; ok && i < cfg.queues; i++)
    ok = delete_queue(conn, &g_queues[i], err, sizeof err);
  if (!ok) {
    fprintf(stderr, "warren-bench: %s\n", err);
    bench_close(conn, false);
    return;
  }
  if (cfg.fanout) {
    amqp_exchange_delete(conn, 1, amqp_cstring_bytes(g_exchange), 0);
    if (!rpc_ok(conn, "exchange.delete", err, sizeof err))
      fprintf(stderr, "warren-bench: %s\n", err);
  }
  bench_close(conn, true);
}

/* ------------------------------------------------------------------ reporting */

static void fmt_rate(char *buf, size_t len, double r) {
  if (r >= 1e6)
    snprintf(buf, len, "%.2fM", r / 1e6);
  else if (r >= 1e3)
    snprintf(buf, len, "%.1fk", r / 1e3);
  else
    snprintf(buf, len, "%.0f", r);
}

struct broker_stats {
  double cpu0, cpu1;
  long peak_rss_kb;
};

static void broker_sample(struct broker_stats *bs) {
  if (cfg.broker_pid <= 0)
    return;
  long rss = proc_status_kb(cfg.broker_pid, "VmRSS");
  if (rss > bs->peak_rss_kb)
    bs->peak_rss_kb = rss;
}

/* ------------------------------------------------------------------ idle connections */

static int run_idle(void) {
  amqp_connection_state_t *conns = calloc((size_t)cfg.connections, sizeof *conns);
  if (!conns) {
    fprintf(stderr, "warren-bench: out of memory\n");
    return 1;
  }
  long rss0 = cfg.broker_pid > 0 ? proc_status_kb(cfg.broker_pid, "VmRSS") : -1;
  double cpu0 = cfg.broker_pid > 0 ? proc_cpu(cfg.broker_pid) : -1;
  int64_t t0 = now_ns(), last_progress = t0;
  int opened = 0;
  char err[320] = "";
  int64_t deadline = t0 + (int64_t)(cfg.timeout * 1e9);
  while (opened < cfg.connections && !g_signal && now_ns() < deadline) {
    conns[opened] = bench_connect(err, sizeof err);
    if (!conns[opened])
      break;
    opened++;
    if (!cfg.quiet && now_ns() - last_progress >= 1000000000) {
      last_progress = now_ns();
      fprintf(stderr, "warren-bench: %5.1f s  %d/%d connections open\n", secs(last_progress - t0),
              opened, cfg.connections);
    }
  }
  int64_t t_open = now_ns();
  bool ok = opened == cfg.connections;
  if (!ok)
    fprintf(stderr, "warren-bench: opened %d of %d connections: %s\n", opened, cfg.connections,
            err[0] ? err : "interrupted or timed out");
  /* Hold them idle; sample the broker's RSS after a settling second. */
  long rss1 = -1, peak = rss0;
  int64_t hold_end = t_open + (int64_t)(cfg.hold * 1e9);
  while (ok && !g_signal && now_ns() < hold_end && now_ns() < deadline) {
    struct timespec ts = {0, 100 * 1000 * 1000};
    nanosleep(&ts, NULL);
    if (cfg.broker_pid > 0) {
      long r = proc_status_kb(cfg.broker_pid, "VmRSS");
      if (r > peak)
        peak = r;
      if (now_ns() - t_open >= 1000000000 || rss1 < 0)
        rss1 = r;
    }
  }
  /* A connection still alive after the hold answers a round trip. */
  int alive = 0;
  for (int i = 0; i < opened; i++) {
    amqp_basic_qos(conns[i], 1, 0, 10, 0);
    if (amqp_get_rpc_reply(conns[i]).reply_type == AMQP_RESPONSE_NORMAL)
      alive++;
  }
  double cpu1 = cfg.broker_pid > 0 ? proc_cpu(cfg.broker_pid) : -1;
  for (int i = 0; i < opened; i++)
    bench_close(conns[i], true);
  free(conns);
  int64_t t_end = now_ns();
  if (alive != opened)
    ok = false;
  double per_conn = (rss0 >= 0 && rss1 >= 0 && opened > 0) ? (double)(rss1 - rss0) / opened : -1;
  printf("warren-bench: %d idle connections against %s (%s:%d)\n", cfg.connections, cfg.broker,
         cfg.host, cfg.port);
  printf("  opened        %d in %.2f s (%.0f/s), %d answered after the hold\n", opened,
         secs(t_open - t0), opened / (secs(t_open - t0) > 0 ? secs(t_open - t0) : 1), alive);
  if (per_conn >= 0)
    printf("  broker RSS    %.1f MiB before, %.1f MiB with them open: %.1f KiB per connection\n",
           rss0 / 1024.0, rss1 / 1024.0, per_conn);
  printf("  status        %s\n", ok ? "ok" : "FAILED");
  printf("RESULT scenario=%s broker=%s mode=idle connections=%d opened=%d alive=%d open_s=%.3f "
         "rss_before_kb=%ld rss_after_kb=%ld rss_per_conn_kb=%.1f broker_peak_rss_kb=%ld "
         "broker_cpu_s=%.3f elapsed_s=%.3f status=%s\n",
         cfg.scenario, cfg.broker, cfg.connections, opened, alive, secs(t_open - t0), rss0, rss1,
         per_conn, peak, (cpu0 >= 0 && cpu1 >= 0) ? cpu1 - cpu0 : -1.0, secs(t_end - t0),
         ok ? "ok" : "fail");
  fflush(stdout);
  return ok ? 0 : 1;
}

/* ------------------------------------------------------------------ options */

static void usage(FILE *out) {
  fprintf(out,
"usage: warren-bench [options]\n"
"Load generator for AMQP 0-9-1 brokers. Every producer and consumer is a thread with its\n"
"own connection; consumers check that each message arrived exactly once per queue.\n"
"\n"
"Connection:\n"
"  --host H            broker host (default 127.0.0.1)\n"
"  --port N            broker port (default 5672)\n"
"  --user U, --password P, --vhost V   credentials (default guest/guest, vhost /)\n"
"  --connect-retry S   keep retrying connections for S seconds (default 0)\n"
"\n"
"Workload:\n"
"  -p, --producers N   producer threads (default 1)\n"
"  -c, --consumers N   consumer threads (default: one per queue)\n"
"  -q, --queues N      queues (default 1); producer i publishes to queue i %% N and\n"
"                      consumer j consumes from queue j %% N\n"
"  -n, --count N       total messages over all producers (suffix k or M allowed)\n"
"  -d, --duration S    publish for S seconds (with --rate: rate*S messages each)\n"
"  -r, --rate R        messages per second per producer, steadily paced (default: max)\n"
"  -s, --size B        body size in bytes, at least 16 (default 16)\n"
"      --persistent    delivery-mode 2 into durable queues (and a durable exchange)\n"
"      --confirm W     publisher confirms, at most W unconfirmed (1: wait for each)\n"
"      --prefetch N    consumer basic.qos prefetch-count (default: none)\n"
"      --ack K         manual acks, one basic.ack multiple=true every K deliveries\n"
"                      (default: no-ack consumers)\n"
"      --fanout        publish to one fanout exchange bound to all the queues\n"
"      --consume-after consumers attach only after all publishing (and confirms) is done\n"
"      --dead-letter-ttl MS  producers publish to a source queue PREFIX-src declared\n"
"                      with x-message-ttl MS, x-dead-letter-exchange \"\" and\n"
"                      x-dead-letter-routing-key PREFIX-q0; it has no consumer, so\n"
"                      every message expires into PREFIX-q0, which the consumers\n"
"                      consume (one queue only, no --fanout; 0: at once)\n"
"      --no-batch      publish with one amqp_basic_publish call per message (rabbitmq-c\n"
"                      sends each frame separately: 3 send calls per message); by\n"
"                      default producers encode the frames themselves and write many\n"
"                      publishes per send call (up to 64 KiB, within the confirm\n"
"                      window; when paced, only what is due)\n"
"      --phase P       all (default), publish (no consumers; queues are kept) or\n"
"                      consume (queues must exist; assumes --count was published by\n"
"                      --producers producers in an earlier --phase publish run)\n"
"\n"
"Idle connections:\n"
"      --connections N open N connections with one channel each and hold them idle\n"
"      --hold S        seconds to hold them (default 3)\n"
"\n"
"Run control and output:\n"
"      --queue-prefix S  prefix of queue and exchange names (default wbench-PID-RANDOM)\n"
"      --keep          do not delete the queues and exchange at the end\n"
"      --timeout S     safety cap for the whole run (default 300); when reached, report\n"
"                      what was measured and exit non-zero\n"
"      --idle-timeout S  consumers stop after S seconds without a delivery once\n"
"                      publishing is done (default 10)\n"
"      --broker-pid PID  sample this process's CPU time and RSS (same host)\n"
"      --scenario NAME, --broker NAME   labels for the RESULT line\n"
"      --quiet         no progress line on stderr\n"
"  -h, --help          this text\n"
"\n"
"Output: a summary and one line 'RESULT key=value ...' on stdout. Exit status 0 only if\n"
"no message was lost or duplicated and nothing failed or timed out.\n");
}

static bool parse_count(const char *s, uint64_t *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || v < 0)
    return false;
  if (*end == 'k' || *end == 'K')
    v *= 1e3, end++;
  else if (*end == 'm' || *end == 'M')
    v *= 1e6, end++;
  if (*end)
    return false;
  *out = (uint64_t)(v + 0.5);
  return true;
}

static bool parse_double(const char *s, double *out) {
  char *end;
  errno = 0;
  double v = strtod(s, &end);
  if (errno || end == s || *end || v < 0)
    return false;
  *out = v;
  return true;
}

static bool parse_int(const char *s, long lo, long hi, long *out) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 10);
  if (errno || end == s || *end || v < lo || v > hi)
    return false;
  *out = v;
  return true;
}

enum {
  OPT_HOST = 256, OPT_PORT, OPT_USER, OPT_PASSWORD, OPT_VHOST, OPT_RETRY, OPT_PERSISTENT,
  OPT_CONFIRM, OPT_PREFETCH, OPT_ACK, OPT_FANOUT, OPT_AFTER, OPT_PHASE, OPT_CONNS, OPT_HOLD,
  OPT_PREFIX, OPT_KEEP, OPT_TIMEOUT, OPT_IDLE, OPT_PID, OPT_SCEN, OPT_BROKER, OPT_QUIET,
  OPT_NO_BATCH, OPT_DEAD_LETTER_TTL,
};

static void bad_option(const char *name, const char *val) {
  fprintf(stderr, "warren-bench: bad value for --%s: '%s' (see --help)\n", name, val);
  exit(2);
}

static void parse_options(int argc, char **argv) {
  static const struct option opts[] = {
      {"host", required_argument, 0, OPT_HOST},
      {"port", required_argument, 0, OPT_PORT},
      {"user", required_argument, 0, OPT_USER},
      {"password", required_argument, 0, OPT_PASSWORD},
      {"vhost", required_argument, 0, OPT_VHOST},
      {"connect-retry", required_argument, 0, OPT_RETRY},
      {"producers", required_argument, 0, 'p'},
      {"consumers", required_argument, 0, 'c'},
      {"queues", required_argument, 0, 'q'},
      {"count", required_argument, 0, 'n'},
      {"duration", required_argument, 0, 'd'},
      {"rate", required_argument, 0, 'r'},
      {"size", required_argument, 0, 's'},
      {"persistent", no_argument, 0, OPT_PERSISTENT},
      {"confirm", required_argument, 0, OPT_CONFIRM},
      {"prefetch", required_argument, 0, OPT_PREFETCH},
      {"ack", required_argument, 0, OPT_ACK},
      {"fanout", no_argument, 0, OPT_FANOUT},
      {"consume-after", no_argument, 0, OPT_AFTER},
      {"phase", required_argument, 0, OPT_PHASE},
      {"connections", required_argument, 0, OPT_CONNS},
      {"hold", required_argument, 0, OPT_HOLD},
      {"queue-prefix", required_argument, 0, OPT_PREFIX},
      {"keep", no_argument, 0, OPT_KEEP},
      {"timeout", required_argument, 0, OPT_TIMEOUT},
      {"idle-timeout", required_argument, 0, OPT_IDLE},
      {"broker-pid", required_argument, 0, OPT_PID},
      {"scenario", required_argument, 0, OPT_SCEN},
      {"broker", required_argument, 0, OPT_BROKER},
      {"quiet", no_argument, 0, OPT_QUIET},
      {"no-batch", no_argument, 0, OPT_NO_BATCH},
      {"dead-letter-ttl", required_argument, 0, OPT_DEAD_LETTER_TTL},
      {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0},
  };
  bool have_prefix = false;
  int o;
  long v;
  while ((o = getopt_long(argc, argv, "p:c:q:n:d:r:s:h", opts, NULL)) != -1) {
    const char *name = "";
    for (const struct option *x = opts; x->name; x++)
      if (x->val == o)
        name = x->name;
    switch (o) {
    case OPT_HOST: cfg.host = optarg; break;
    case OPT_PORT:
      if (!parse_int(optarg, 1, 65535, &v)) bad_option(name, optarg);
      cfg.port = (int)v;
      break;
    case OPT_USER: cfg.user = optarg; break;
    case OPT_PASSWORD: cfg.password = optarg; break;
    case OPT_VHOST: cfg.vhost = optarg; break;
    case OPT_RETRY: if (!parse_double(optarg, &cfg.connect_retry)) bad_option(name, optarg); break;
    case 'p':
      if (!parse_int(optarg, 0, MAX_PRODUCERS, &v)) bad_option(name, optarg);
      cfg.producers = (int)v;
      break;
    case 'c':
      if (!parse_int(optarg, 0, 10000, &v)) bad_option(name, optarg);
      cfg.consumers = (int)v;
      break;
    case 'q':
      if (!parse_int(optarg, 1, 10000, &v)) bad_option(name, optarg);
      cfg.queues = (int)v;
      break;
    case 'n': if (!parse_count(optarg, &cfg.count)) bad_option(name, optarg); break;
    case 'd': if (!parse_double(optarg, &cfg.duration)) bad_option(name, optarg); break;
    case 'r': if (!parse_double(optarg, &cfg.rate)) bad_option(name, optarg); break;
    case 's':
      if (!parse_int(optarg, HDR_SIZE, 512L * 1024 * 1024, &v)) bad_option(name, optarg);
      cfg.size = (size_t)v;
      break;
    case OPT_PERSISTENT: cfg.persistent = true; break;
    case OPT_CONFIRM:
      if (!parse_int(optarg, 0, 1 << 20, &v)) bad_option(name, optarg);
      cfg.confirm = (unsigned)v;
      break;
    case OPT_PREFETCH:
      if (!parse_int(optarg, 0, 65535, &v)) bad_option(name, optarg);
      cfg.prefetch = (unsigned)v;
      break;
    case OPT_ACK:
      if (!parse_int(optarg, 0, 1 << 20, &v)) bad_option(name, optarg);
      cfg.ack_every = (unsigned)v;
      break;
    case OPT_FANOUT: cfg.fanout = true; break;
    case OPT_AFTER: cfg.consume_after = true; break;
    case OPT_PHASE:
      if (!strcmp(optarg, "all")) cfg.phase = PHASE_ALL;
      else if (!strcmp(optarg, "publish")) cfg.phase = PHASE_PUBLISH;
      else if (!strcmp(optarg, "consume")) cfg.phase = PHASE_CONSUME;
      else bad_option(name, optarg);
      break;
    case OPT_CONNS:
      if (!parse_int(optarg, 1, 1000000, &v)) bad_option(name, optarg);
      cfg.connections = (int)v;
      break;
    case OPT_HOLD: if (!parse_double(optarg, &cfg.hold)) bad_option(name, optarg); break;
    case OPT_PREFIX:
      if (strlen(optarg) == 0 || strlen(optarg) > 100) bad_option(name, optarg);
      snprintf(cfg.prefix, sizeof cfg.prefix, "%s", optarg);
      have_prefix = true;
      break;
    case OPT_KEEP: cfg.keep = true; break;
    case OPT_TIMEOUT:
      if (!parse_double(optarg, &cfg.timeout) || cfg.timeout <= 0) bad_option(name, optarg);
      break;
    case OPT_IDLE: if (!parse_double(optarg, &cfg.idle_timeout)) bad_option(name, optarg); break;
    case OPT_PID:
      if (!parse_int(optarg, 1, LONG_MAX, &v)) bad_option(name, optarg);
      cfg.broker_pid = v;
      break;
    case OPT_SCEN: cfg.scenario = optarg; break;
    case OPT_BROKER: cfg.broker = optarg; break;
    case OPT_QUIET: cfg.quiet = true; break;
    case OPT_NO_BATCH: cfg.no_batch = true; break;
    case OPT_DEAD_LETTER_TTL:
      if (!parse_int(optarg, 0, INT32_MAX, &v)) bad_option(name, optarg);
      cfg.dead_letter_ttl = v;
      break;
    case 'h': usage(stdout); exit(0);
    default: usage(stderr); exit(2);
    }
  }
  if (optind < argc) {
    fprintf(stderr, "warren-bench: unexpected argument '%s' (see --help)\n", argv[optind]);
    exit(2);
  }
  if (!have_prefix) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    snprintf(cfg.prefix, sizeof cfg.prefix, "wbench-%ld-%06lx", (long)getpid(),
             (unsigned long)(ts.tv_nsec ^ (ts.tv_sec << 8)) & 0xffffff);
  }
  if (cfg.connections > 0)
    return;
  if (cfg.consumers < 0)
    cfg.consumers = cfg.queues;
  if (cfg.phase == PHASE_PUBLISH)
    cfg.consumers = 0;
  if (cfg.phase == PHASE_CONSUME && cfg.count == 0) {
    fprintf(stderr, "warren-bench: --phase consume needs --count (what was published)\n");
    exit(2);
  }
  if (cfg.count == 0 && cfg.duration == 0) {
    fprintf(stderr, "warren-bench: give --count or --duration\n");
    exit(2);
  }
  if (cfg.producers == 0 && cfg.phase != PHASE_CONSUME) {
    fprintf(stderr, "warren-bench: need at least one producer\n");
    exit(2);
  }
  if (cfg.consumers > 0 && cfg.consumers < cfg.queues) {
    fprintf(stderr, "warren-bench: %d consumers cannot cover %d queues\n", cfg.consumers,
            cfg.queues);
    exit(2);
  }
  if (cfg.dead_letter_ttl >= 0 && (cfg.queues != 1 || cfg.fanout)) {
    fprintf(stderr, "warren-bench: --dead-letter-ttl needs a single queue and no --fanout\n");
    exit(2);
  }
  if (cfg.ack_every && cfg.prefetch && cfg.ack_every > cfg.prefetch) {
    fprintf(stderr, "warren-bench: --ack %u exceeds --prefetch %u: the consumer would stall\n",
            cfg.ack_every, cfg.prefetch);
    exit(2);
  }
  if (cfg.duration > 0 && cfg.rate > 0 && cfg.count == 0)
    cfg.count = (uint64_t)(cfg.rate * cfg.duration + 0.5) * (uint64_t)cfg.producers;
}

static void on_signal(int sig) { g_signal = sig; }

/* Starts a worker thread with SIGINT and SIGTERM blocked, so that only the main
 * thread takes them. Returns true if the thread runs. */
static bool spawn(pthread_t *th, void *(*fn)(void *), void *arg) {
  sigset_t block, old;
  sigemptyset(&block);
  sigaddset(&block, SIGINT);
  sigaddset(&block, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &block, &old);
  int rc = pthread_create(th, NULL, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (rc != 0)
    fprintf(stderr, "warren-bench: pthread_create: %s\n", strerror(rc));
  return rc == 0;
}

/* Waits on the start gate for at most 50 ms (g_gate_mu held). */
static void gate_wait_50ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_nsec += 50 * 1000000;
  if (ts.tv_nsec >= 1000000000) ts.tv_sec++, ts.tv_nsec -= 1000000000;
  pthread_cond_timedwait(&g_gate_cv, &g_gate_mu, &ts);
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv) {
  parse_options(argc, argv);
  g_t0 = now_ns();
  signal(SIGPIPE, SIG_IGN);
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_signal;
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);

  if (cfg.connections > 0)
    return run_idle();

  int exit_code = 0;
  char err[320] = "";
  bool timed_out = false, topology_ok = true;
  struct broker_stats bs = {-1, -1, -1};

  g_queues = calloc((size_t)cfg.queues, sizeof *g_queues);
  g_prod = calloc((size_t)(cfg.producers ? cfg.producers : 1), sizeof *g_prod);
  g_ncons = cfg.consumers;
  g_cons = calloc((size_t)(g_ncons ? g_ncons : 1), sizeof *g_cons);
  if (!g_queues || !g_prod || !g_cons) {
    fprintf(stderr, "warren-bench: out of memory\n");
    return 1;
  }
  for (int i = 0; i < cfg.queues; i++)
    snprintf(g_queues[i].name, sizeof g_queues[i].name, "%s-q%d", cfg.prefix, i);
  snprintf(g_exchange, sizeof g_exchange, "%s-fanout", cfg.prefix);
  snprintf(g_source.name, sizeof g_source.name, "%s-src", cfg.prefix);

  /* Per-producer message targets: the count split evenly, or unbounded. */
  uint64_t per = cfg.producers ? cfg.count / (uint64_t)cfg.producers : 0;
  uint64_t rest = cfg.producers ? cfg.count % (uint64_t)cfg.producers : 0;
  for (int i = 0; i < cfg.producers; i++) {
    g_prod[i].id = i;
    g_prod[i].queue = i % cfg.queues;
    g_prod[i].target = cfg.count ? per + ((uint64_t)i < rest) : UINT64_MAX;
  }

  int64_t deadline = g_t0 + (int64_t)(cfg.timeout * 1e9);
  amqp_connection_state_t admin = bench_connect(err, sizeof err);
  if (!admin) {
    fprintf(stderr, "warren-bench: %s\n", err);
    topology_ok = false;
  } else if (!declare_topology(admin, cfg.phase == PHASE_CONSUME, err, sizeof err)) {
    fprintf(stderr, "warren-bench: %s\n", err);
    topology_ok = false;
  }
  bench_close(admin, topology_ok);
  if (cfg.broker_pid > 0) {
    bs.cpu0 = proc_cpu(cfg.broker_pid);
    broker_sample(&bs);
  }

  int64_t t_pub_start = 0, t_con_start = 0, t_pub_end = 0;
  int nstarted_cons = 0, nstarted_prod = 0;

  for (int i = 0; i < g_ncons; i++) {
    g_cons[i].id = i;
    g_cons[i].queue = i % cfg.queues;
    g_cons[i].seen = calloc((size_t)(cfg.producers ? cfg.producers : 1), sizeof(struct bitmap));
    if (!g_cons[i].seen) {
      fprintf(stderr, "warren-bench: out of memory\n");
      return 1;
    }
    for (int p = 0; p < cfg.producers; p++)
      if (routes_to(p, g_cons[i].queue) && g_prod[p].target != UINT64_MAX)
        bitmap_reserve(&g_cons[i].seen[p], g_prod[p].target);
  }

  /* Start the consumers (unless they attach later) and wait until they are
   * subscribed, so that no message waits for a consumer that is on its way. */
  if (topology_ok && g_ncons > 0 && !cfg.consume_after) {
    for (int i = 0; i < g_ncons; i++)
      if (spawn(&g_cons[i].th, consumer_main, &g_cons[i]))
        nstarted_cons++;
    pthread_mutex_lock(&g_gate_mu);
    for (;;) {
      int ready = 0;
      for (int i = 0; i < nstarted_cons; i++)
        ready += g_cons[i].ready;
      if (ready == nstarted_cons || atomic_load(&g_stop) || g_signal || now_ns() > deadline)
        break;
      gate_wait_50ms();
    }
    pthread_mutex_unlock(&g_gate_mu);
    t_con_start = now_ns();
  }

  if (cfg.phase == PHASE_CONSUME) {
    /* Everything was published by an earlier run. */
    for (int q = 0; q < cfg.queues; q++) {
      uint64_t e = 0;
      for (int p = 0; p < cfg.producers; p++)
        if (routes_to(p, q))
          e += g_prod[p].target;
      atomic_store(&g_queues[q].expected, e);
    }
    for (int p = 0; p < cfg.producers; p++)
      atomic_store(&g_prod[p].sent, g_prod[p].target);
    atomic_store_explicit(&g_producers_done, true, memory_order_release);
    if (!t_con_start)
      t_con_start = now_ns();
  } else if (topology_ok && !atomic_load(&g_stop)) {
    for (int i = 0; i < cfg.producers; i++)
      if (spawn(&g_prod[i].th, producer_main, &g_prod[i]))
        nstarted_prod++;
    pthread_mutex_lock(&g_gate_mu);
    for (;;) {
      int started = 0;
      for (int i = 0; i < nstarted_prod; i++)
        started += g_prod[i].started;
      if (started == nstarted_prod || atomic_load(&g_stop) || g_signal || now_ns() > deadline)
        break;
      gate_wait_50ms();
    }
    t_pub_start = now_ns();
    atomic_store(&g_go, true);
    pthread_cond_broadcast(&g_gate_cv);
    pthread_mutex_unlock(&g_gate_mu);
  }
  if (!t_con_start)
    t_con_start = t_pub_start;

  /* Monitor: progress, end of publishing, late consumers, timeout, signals. */
  int64_t last_progress = now_ns();
  uint64_t last_sent = 0, last_recv = 0;
  bool producers_done = cfg.phase == PHASE_CONSUME || nstarted_prod == 0;
  if (producers_done && cfg.phase != PHASE_CONSUME)
    atomic_store_explicit(&g_producers_done, true, memory_order_release);
  for (;;) {
    struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
    int64_t t = now_ns();
    broker_sample(&bs);
    if (g_signal) {
      fprintf(stderr, "warren-bench: interrupted by signal %d\n", (int)g_signal);
      atomic_store(&g_stop, true);
      break;
    }
    if (t > deadline) {
      fprintf(stderr, "warren-bench: timeout after %.0f s: stopping and reporting what was measured\n",
              cfg.timeout);
      timed_out = true;
      atomic_store(&g_stop, true);
      break;
    }
    pthread_mutex_lock(&g_gate_mu);
    int pdone = 0, cdone = 0;
    for (int i = 0; i < nstarted_prod; i++)
      pdone += g_prod[i].finished;
    for (int i = 0; i < nstarted_cons; i++)
      cdone += g_cons[i].finished;
    pthread_mutex_unlock(&g_gate_mu);
    if (!producers_done && pdone == nstarted_prod) {
      producers_done = true;
      t_pub_end = 0;
      for (int p = 0; p < nstarted_prod; p++)
        if (g_prod[p].t_last > t_pub_end)
          t_pub_end = g_prod[p].t_last;
      for (int q = 0; q < cfg.queues; q++) {
        uint64_t e = 0;
        for (int p = 0; p < cfg.producers; p++)
          if (routes_to(p, q))
            e += atomic_load(&g_prod[p].sent);
        atomic_store(&g_queues[q].expected, e);
      }
      atomic_store_explicit(&g_producers_done, true, memory_order_release);
      if (cfg.consume_after && g_ncons > 0 && !atomic_load(&g_stop)) {
        t_con_start = now_ns();
        for (int i = 0; i < g_ncons; i++)
          if (spawn(&g_cons[i].th, consumer_main, &g_cons[i]))
            nstarted_cons++;
        continue;
      }
    }
    if (producers_done && (cdone == nstarted_cons || atomic_load(&g_stop)))
      break;
    if (!cfg.quiet && t - last_progress >= 1000000000) {
      uint64_t s = 0, r = 0, unc = 0;
      for (int i = 0; i < cfg.producers; i++) {
        s += atomic_load_explicit(&g_prod[i].sent, memory_order_relaxed);
        unc += atomic_load_explicit(&g_prod[i].unconfirmed, memory_order_relaxed);
      }
      for (int i = 0; i < nstarted_cons; i++)
        r += atomic_load_explicit(&g_cons[i].received, memory_order_relaxed);
      double dt = secs(t - last_progress);
      char sr[32], rr[32];
      fmt_rate(sr, sizeof sr, (double)(s - last_sent) / dt);
      fmt_rate(rr, sizeof rr, (double)(r - last_recv) / dt);
      fprintf(stderr, "warren-bench: %6.1f s  sent %" PRIu64 " (%s/s)  received %" PRIu64 " (%s/s)",
              secs(t - g_t0), s, sr, r, rr);
      if (cfg.confirm)
        fprintf(stderr, "  unconfirmed %" PRIu64, unc);
      if (bs.peak_rss_kb > 0)
        fprintf(stderr, "  broker peak RSS %.0f MiB", bs.peak_rss_kb / 1024.0);
      fputc('\n', stderr);
      last_progress = t;
      last_sent = s;
      last_recv = r;
    }
  }
  /* Peak RSS is sampled every 50 ms, not read from VmHWM: that covers the
   * broker's whole life, not this run. */
  if (cfg.broker_pid > 0)
    bs.cpu1 = proc_cpu(cfg.broker_pid);

  /* Collect the threads; after a stop give them a few seconds (every wait of
   * theirs is bounded by POLL_MS or an RPC timeout) and report without the
   * stragglers rather than hang. */
  int64_t grace_end = now_ns() + 5000000000LL;
  bool all_joined = true;
  for (;;) {
    pthread_mutex_lock(&g_gate_mu);
    int pending = 0;
    for (int i = 0; i < nstarted_prod; i++)
      pending += !g_prod[i].finished;
    for (int i = 0; i < nstarted_cons; i++)
      pending += !g_cons[i].finished;
    pthread_mutex_unlock(&g_gate_mu);
    if (pending == 0)
      break;
    if (now_ns() > grace_end) {
      all_joined = false;
      fprintf(stderr, "warren-bench: %d thread(s) did not stop in time\n", pending);
      break;
    }
    struct timespec ts = {0, 20 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  if (all_joined) {
    for (int i = 0; i < nstarted_prod; i++)
      pthread_join(g_prod[i].th, NULL);
    for (int i = 0; i < nstarted_cons; i++)
      pthread_join(g_cons[i].th, NULL);
  }
  int64_t t_end = now_ns();

  /* ---- results */
  uint64_t sent = 0, received = 0, nacked = 0, bad = 0, lost = 0, dup = 0, leftover = 0;
  int64_t t_first_del = 0, t_last_del = 0;
  for (int i = 0; i < cfg.producers; i++) {
    sent += atomic_load(&g_prod[i].sent);
    nacked += g_prod[i].nacked;
    if (g_prod[i].failed)
      fprintf(stderr, "warren-bench: %s\n", g_prod[i].err);
  }
  if (!t_pub_end)
    for (int p = 0; p < nstarted_prod; p++)
      if (g_prod[p].t_last > t_pub_end)
        t_pub_end = g_prod[p].t_last;
  struct hist *h = calloc(1, sizeof *h);
  if (!h) {
    fprintf(stderr, "warren-bench: out of memory\n");
    return 1;
  }
  for (int i = 0; i < nstarted_cons; i++) {
    struct consumer *c = &g_cons[i];
    received += atomic_load(&c->received);
    if (c->failed)
      fprintf(stderr, "warren-bench: %s\n", c->err);
    if (!all_joined)
      continue;
    hist_merge(h, &c->hist);
    bad += c->bad;
    dup += c->dup;
    if (c->t_first && (!t_first_del || c->t_first < t_first_del))
      t_first_del = c->t_first;
    if (c->t_last > t_last_del)
      t_last_del = c->t_last;
  }
  bool checked = false;
  if (!topology_ok && cfg.phase == PHASE_CONSUME) {
    /* The queues are missing (e.g. not recovered after a restart): all lost. */
    for (int q = 0; q < cfg.queues; q++)
      lost += atomic_load(&g_queues[q].expected);
    checked = true;
  } else if (topology_ok && cfg.phase != PHASE_PUBLISH && g_ncons > 0 && !all_joined) {
    /* Threads still running: estimate from the counters. */
    uint64_t expected = 0;
    for (int q = 0; q < cfg.queues; q++)
      expected += atomic_load(&g_queues[q].expected);
    lost = expected > received ? expected - received : 0;
    checked = true;
  } else if (topology_ok && cfg.phase != PHASE_PUBLISH && g_ncons > 0) {
    checked = true;
    /* Merge the consumers' bitmaps queue by queue. */
    for (int q = 0; q < cfg.queues; q++) {
      for (int p = 0; p < cfg.producers; p++) {
        if (!routes_to(p, q))
          continue;
        uint64_t n = atomic_load(&g_prod[p].sent);
        size_t words = (size_t)((n + 63) / 64);
        uint64_t *acc = calloc(words ? words : 1, sizeof *acc);
        if (!acc) {
          fprintf(stderr, "warren-bench: out of memory\n");
          return 1;
        }
        for (int i = 0; i < nstarted_cons; i++) {
          struct consumer *c = &g_cons[i];
          if (c->queue != q)
            continue;
          struct bitmap *b = &c->seen[p];
          for (size_t w = 0; w < b->nwords; w++) {
            uint64_t bits = b->w[w];
            if (w >= words) {
              bad += (uint64_t)__builtin_popcountll(bits); /* beyond what was sent */
              continue;
            }
            if (w == words - 1 && (n & 63)) {
              uint64_t valid = ((uint64_t)1 << (n & 63)) - 1;
              bad += (uint64_t)__builtin_popcountll(bits & ~valid);
              bits &= valid;
            }
            dup += (uint64_t)__builtin_popcountll(acc[w] & bits);
            acc[w] |= bits;
          }
        }
        uint64_t distinct = 0;
        for (size_t w = 0; w < words; w++)
          distinct += (uint64_t)__builtin_popcountll(acc[w]);
        lost += n - distinct;
        free(acc);
      }
    }
  }

  if (topology_ok && !cfg.keep && cfg.phase != PHASE_PUBLISH)
    delete_topology();
  for (int q = 0; q < cfg.queues; q++)
    leftover += g_queues[q].leftover;
  leftover += g_source.leftover;

  int64_t pub_ns = t_pub_end > t_pub_start ? t_pub_end - t_pub_start : 0;
  /* Consuming starts with publishing, or, for consumers that attach to a backlog,
   * when the first of them is subscribed. */
  int64_t con_from = t_pub_start;
  if (cfg.phase == PHASE_CONSUME || cfg.consume_after) {
    con_from = t_con_start;
    for (int i = 0; i < nstarted_cons; i++)
      if (g_cons[i].t_start && g_cons[i].t_start < con_from)
        con_from = g_cons[i].t_start;
  }
  int64_t con_ns = t_last_del > con_from ? t_last_del - con_from : 0;
  double pub_rate = pub_ns > 0 ? (double)sent / secs(pub_ns) : 0;
  double con_rate = con_ns > 0 ? (double)received / secs(con_ns) : 0;
  double first_delivery_s = t_first_del ? secs(t_first_del - g_t0) : -1;
  double elapsed = secs(t_end - g_t0);
  double p50 = hist_quantile(h, 0.50) / 1e3, p99 = hist_quantile(h, 0.99) / 1e3,
         p999 = hist_quantile(h, 0.999) / 1e3, pmax = h->max / 1e3;
  int errors = atomic_load(&g_errors) + (topology_ok ? 0 : 1);
  bool ok = !timed_out && !g_signal && errors == 0 && lost == 0 && dup == 0 && bad == 0 &&
            nacked == 0 && all_joined;
  exit_code = ok ? 0 : 1;
  double broker_cpu = (bs.cpu0 >= 0 && bs.cpu1 >= 0) ? bs.cpu1 - bs.cpu0 : -1;
  uint64_t msgs = sent > received ? sent : received;
  double cpu_per_m = (broker_cpu >= 0 && msgs) ? broker_cpu * 1e6 / (double)msgs : -1;

  char r1[32], r2[32];
  fmt_rate(r1, sizeof r1, pub_rate);
  fmt_rate(r2, sizeof r2, con_rate);
  printf("warren-bench %s against %s (%s:%d)\n", cfg.scenario, cfg.broker, cfg.host, cfg.port);
  char sizebuf[48] = "";
  if (cfg.phase != PHASE_CONSUME)
    snprintf(sizebuf, sizeof sizebuf, ", %zu B bodies", cfg.size);
  char dlbuf[64] = "";
  if (cfg.dead_letter_ttl >= 0)
    snprintf(dlbuf, sizeof dlbuf, " fed by dead-lettering (TTL %ld ms)", cfg.dead_letter_ttl);
  printf("  workload      %d producer(s), %d consumer(s), %d queue(s)%s%s%s%s%s\n", cfg.producers,
         cfg.consumers, cfg.queues, cfg.fanout ? " behind a fanout exchange" : "", dlbuf, sizebuf,
         cfg.persistent ? ", persistent" : "",
         cfg.consume_after ? ", consumers attach after publishing" : "");
  if (cfg.phase != PHASE_CONSUME)
    printf("  published     %" PRIu64 " in %.2f s: %s msg/s%s%s\n", sent, secs(pub_ns), r1,
           cfg.rate > 0 ? " (paced)" : "", cfg.confirm ? " (all confirmed)" : "");
  if (cfg.confirm && nacked)
    printf("  nacked        %" PRIu64 "\n", nacked);
  if (cfg.phase != PHASE_PUBLISH) {
    printf("  consumed      %" PRIu64 " in %.2f s: %s msg/s%s\n", received, secs(con_ns), r2,
           cfg.fanout ? " (deliveries over all queues)" : "");
    printf("  latency       p50 %.0f us, p99 %.0f us, p99.9 %.0f us, max %.0f us\n", p50, p99, p999,
           pmax);
    if (first_delivery_s >= 0)
      printf("  first delivery %.3f s after start\n", first_delivery_s);
    printf("  lost          %" PRIu64 "%s\n", lost, all_joined ? "" : " (estimated from counters)");
    printf("  duplicated    %" PRIu64 "\n", dup);
    if (bad)
      printf("  malformed     %" PRIu64 "\n", bad);
    if (leftover)
      printf("  left in queues %" PRIu64 "\n", leftover);
  }
  if (broker_cpu >= 0)
    printf("  broker        %.2f CPU s (%.1f s per million messages), peak RSS %.1f MiB\n",
           broker_cpu, cpu_per_m, bs.peak_rss_kb / 1024.0);
  printf("  elapsed       %.2f s%s\n", elapsed, timed_out ? " (TIMEOUT)" : "");
  printf("  status        %s\n", ok ? "ok" : "FAILED");

  char lost_s[32], dup_s[32];
  if (checked) {
    snprintf(lost_s, sizeof lost_s, "%" PRIu64, lost);
    snprintf(dup_s, sizeof dup_s, "%" PRIu64, dup);
  } else {
    snprintf(lost_s, sizeof lost_s, "-");
    snprintf(dup_s, sizeof dup_s, "-");
  }
  printf("RESULT scenario=%s broker=%s phase=%s pub_rate=%.1f con_rate=%.1f p50_us=%.1f "
         "p99_us=%.1f p999_us=%.1f max_us=%.1f lost=%s dup=%s sent=%" PRIu64 " received=%" PRIu64
         " elapsed_s=%.3f pub_s=%.3f con_s=%.3f first_delivery_s=%.3f nacked=%" PRIu64
         " malformed=%" PRIu64 " leftover=%" PRIu64 " producers=%d consumers=%d queues=%d size=%zu"
         " persistent=%d confirm=%u prefetch=%u ack=%u fanout=%d dead_letter_ttl=%ld rate=%.0f"
         " batch=%d broker_cpu_s=%.3f cpu_s_per_M=%.3f broker_peak_rss_kb=%ld errors=%d timeout=%d"
         " status=%s\n",
         cfg.scenario, cfg.broker,
         cfg.phase == PHASE_ALL ? "all" : cfg.phase == PHASE_PUBLISH ? "publish" : "consume",
         pub_rate, con_rate, p50, p99, p999, pmax, lost_s, dup_s, sent, received, elapsed,
         secs(pub_ns), secs(con_ns), first_delivery_s, nacked, bad, leftover, cfg.producers,
         cfg.consumers, cfg.queues, cfg.size, cfg.persistent, cfg.confirm, cfg.prefetch,
         cfg.ack_every, cfg.fanout, cfg.dead_letter_ttl, cfg.rate, !cfg.no_batch, broker_cpu,
         cpu_per_m, bs.peak_rss_kb, errors, timed_out, ok ? "ok" : "fail");
  fflush(stdout);
  if (!all_joined)
    _exit(exit_code); /* stuck threads hold connections: do not wait for them */
  free(h);
  return exit_code;
}
