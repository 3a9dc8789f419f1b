// ctnet's in-process kernel calls (build/ctnet-netlink.node, made by scripts/build.sh): the few
// system calls Node has no API for. Everything else (which messages to send, what the replies mean)
// is in TypeScript (rtnetlink.ts, backend.ts). Two calls:
//
//   request(nsFd, buf)   send one rtnetlink request on a NETLINK_ROUTE socket opened inside the
//                        network namespace nsFd (-1: the caller's own) and return every reply
//                        message up to its ACK/error or, for a dump, NLMSG_DONE, as one Buffer.
//   nft(cmd)             libnftables: run these nft commands as one transaction in the caller's
//                        namespace; returns [rc, output, error text].
//
// Namespaces: a socket belongs to the namespace its creator was in when it was made, and stays
// there. So request() enters nsFd on the calling thread, makes the socket, and goes back, with no
// JavaScript in between; if going back fails, the thread would run everything after it in the
// wrong namespace, so the process aborts (fail closed) rather than carry on.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <nftables/libnftables.h>
#include <node_api.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define THROW(env, msg)                              \
  do {                                               \
    napi_throw_error((env), NULL, (msg));            \
    return NULL;                                     \
  } while (0)

static void throw_errno(napi_env env, const char *what, int err) {
  char msg[160];
  snprintf(msg, sizeof msg, "%s: %s", what, strerror(err));
  napi_value code, text, error;
  char name[16];
  snprintf(name, sizeof name, "%d", err);
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, msg, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, NULL, text, &error);
  napi_value errnoValue;
  napi_create_int32(env, err, &errnoValue);
  napi_set_named_property(env, error, "errno", errnoValue);
  napi_throw(env, error);
}

/** A NETLINK_ROUTE socket in namespace nsFd (-1: this thread's own); -errno on failure. */
static int route_socket_in(int nsFd) {
  if (nsFd < 0) {
    int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    return fd < 0 ? -errno : fd;
  }
  int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) return -errno;
  if (setns(nsFd, CLONE_NEWNET) < 0) {
    int err = errno;
    close(self);
    return -err;
  }
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  int err = errno;
  if (setns(self, CLONE_NEWNET) < 0) {
    // This thread is now in another namespace and cannot get back: nothing it did next could be
    // trusted to land where it is meant to.
    fprintf(stderr, "ctnet-netlink: cannot return to the original network namespace (%s): aborting\n", strerror(errno));
    abort();
  }
  close(self);
  return fd < 0 ? -err : fd;
}

// request(nsFd: number, buf: Buffer): Buffer
static napi_value request(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 2) THROW(env, "request(nsFd, buf)");
  int32_t nsFd;
  if (napi_get_value_int32(env, argv[0], &nsFd) != napi_ok) THROW(env, "request: nsFd must be a number");
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[1], &data, &len) != napi_ok) THROW(env, "request: buf must be a Buffer");
  if (len < sizeof(struct nlmsghdr)) THROW(env, "request: buf is shorter than a netlink header");
  const struct nlmsghdr *req = data;
  // The reply is matched by sequence number; the kernel sets its own pid.
  uint32_t seq = req->nlmsg_seq;
  int dump = (req->nlmsg_flags & NLM_F_DUMP) == NLM_F_DUMP;
  // Without an ACK a request that succeeds gets no NLMSG_ERROR, and the loop below would not end.
  if (!dump && !(req->nlmsg_flags & NLM_F_ACK)) THROW(env, "request: a request that is not a dump must ask for an ACK (NLM_F_ACK)");

  int fd = route_socket_in(nsFd);
  if (fd < 0) {
    throw_errno(env, "netlink socket", -fd);
    return NULL;
  }
  // A kernel that does not answer must not hang ctnetd: recv fails with EAGAIN after this long.
  struct timeval timeout = {.tv_sec = 30};
  if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout) < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, "netlink setsockopt", err);
    return NULL;
  }
  // Errors with the request's text (extended ACK) are not needed: errno decides the kind.
  struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
  if (sendto(fd, data, len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
    int err = errno;
    close(fd);
    throw_errno(env, "netlink send", err);
    return NULL;
  }
  size_t cap = 65536, used = 0;
  char *out = malloc(cap);
  if (!out) {
    close(fd);
    THROW(env, "out of memory");
  }
  int done = 0;
  while (!done) {
    // The kernel makes no dump datagram larger than 32 KiB (netlink_recvmsg caps max_recvmsg_len),
    // so with that much room a datagram is never cut short.
    if (cap - used < 32768) {
      char *grown = realloc(out, cap * 2);
      if (!grown) {
        free(out);
        close(fd);
        THROW(env, "out of memory");
      }
      out = grown;
      cap *= 2;
    }
    ssize_t n = recv(fd, out + used, cap - used, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      free(out);
      close(fd);
      throw_errno(env, "netlink recv", err);
      return NULL;
    }
    if (n == 0) break;
    // Walk this datagram: an error message (ACK or errno) ends a request; NLMSG_DONE ends a dump.
    struct nlmsghdr *h = (struct nlmsghdr *)(out + used);
    size_t left = (size_t)n;
    for (; NLMSG_OK(h, left); h = NLMSG_NEXT(h, left)) {
      if (h->nlmsg_seq != seq) continue;
      if (h->nlmsg_type == NLMSG_ERROR || (dump && h->nlmsg_type == NLMSG_DONE)) done = 1;
    }
    used += (size_t)n;
  }
  close(fd);
  napi_value result;
  void *copy;
  napi_status st = napi_create_buffer_copy(env, used, out, &copy, &result);
  free(out);
  if (st != napi_ok) THROW(env, "cannot make the reply buffer");
  return result;
}

// One libnftables context for the process: it keeps nft's cache of the ruleset between
// transactions, as ctnetd's `nft -i` did.
static struct nft_ctx *nft_ctx;

// nft(cmd: string): [rc: number, output: string, error: string]
static napi_value nft(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, NULL, NULL);
  if (argc != 1) THROW(env, "nft(cmd)");
  size_t len;
  if (napi_get_value_string_utf8(env, argv[0], NULL, 0, &len) != napi_ok) THROW(env, "nft: cmd must be a string");
  char *cmd = malloc(len + 1);
  if (!cmd) THROW(env, "out of memory");
  napi_get_value_string_utf8(env, argv[0], cmd, len + 1, &len);
  if (!nft_ctx) {
    nft_ctx = nft_ctx_new(NFT_CTX_DEFAULT);
    if (!nft_ctx || nft_ctx_buffer_output(nft_ctx) != 0 || nft_ctx_buffer_error(nft_ctx) != 0) {
      free(cmd);
      THROW(env, "nft_ctx_new failed");
    }
  }
  int rc = nft_run_cmd_from_buffer(nft_ctx, cmd);
  free(cmd);
  // Reading a buffer hands it over and starts a fresh one for the next command.
  const char *o = nft_ctx_get_output_buffer(nft_ctx);
  const char *e = nft_ctx_get_error_buffer(nft_ctx);
  napi_value result, vrc, vo, ve;
  napi_create_array_with_length(env, 3, &result);
  napi_create_int32(env, rc, &vrc);
  napi_create_string_utf8(env, o ? o : "", NAPI_AUTO_LENGTH, &vo);
  napi_create_string_utf8(env, e ? e : "", NAPI_AUTO_LENGTH, &ve);
  napi_set_element(env, result, 0, vrc);
  napi_set_element(env, result, 1, vo);
  napi_set_element(env, result, 2, ve);
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor props[] = {
      {"request", NULL, request, NULL, NULL, NULL, napi_default, NULL},
      {"nft", NULL, nft, NULL, NULL, NULL, napi_default, NULL},
  };
  napi_define_properties(env, exports, sizeof props / sizeof props[0], props);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
