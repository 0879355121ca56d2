#include "core/net/control_client.h"

#include "core/base/log.h"
#include "core/net/messages.h"
#include "core/wire/envelope.h"

namespace mirrorcast {

using Millis = std::chrono::milliseconds;
using SteadyClock = std::chrono::steady_clock;

namespace {

int RemainingMs(SteadyClock::time_point deadline) {
  auto left = std::chrono::duration_cast<Millis>(deadline - SteadyClock::now()).count();
  return left < 0 ? 0 : static_cast<int>(left);
}

}  // namespace

ControlClient::ControlClient(zmq::context_t& context, HostPort broker, ClientTransport transport)
    : broker_(std::move(broker)),
      socket_(context, zmq::socket_type::dealer),
      watch_(context, socket_) {
  ConfigureSocket(socket_, broker_, static_cast<int64_t>(kMaxControlMessageBytes));
  SecureClientSocket(socket_, transport);
  // Queue only on a live connection: a request that cannot be delivered now
  // fails here instead of being delivered long after its caller gave up.
  socket_.set(zmq::sockopt::immediate, 1);
  socket_.set(zmq::sockopt::reconnect_ivl, 100);
  socket_.set(zmq::sockopt::reconnect_ivl_max, 2000);
  socket_.connect(broker_.Endpoint());
}

Result<v1::ControlReply> ControlClient::Call(v1::ControlRequest request, Millis timeout) {
  const auto deadline = SteadyClock::now() + timeout;
  const uint64_t id = next_request_id_++;
  request.set_protocol_version(kProtocolVersion);
  request.set_request_id(id);

  // Wait for the connection to accept the request.
  for (;;) {
    zmq::pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLOUT, 0};
    int n = zmq::poll(&item, 1, Millis(std::min(RemainingMs(deadline), 100)));
    if (n > 0 && (item.revents & ZMQ_POLLOUT)) {
      zmq::message_t frame = ToFrame(request);
      if (socket_.send(frame, zmq::send_flags::dontwait)) break;
    }
    if (RemainingMs(deadline) == 0) {
      const std::string why = watch_.LastFailure();
      return Status::Unavailable("broker " + broker_.ToString() + " not reachable" +
                                 (why.empty() ? std::string() : ": " + why));
    }
  }

  for (;;) {
    zmq::pollitem_t item{static_cast<void*>(socket_), 0, ZMQ_POLLIN, 0};
    int n = zmq::poll(&item, 1, Millis(std::min(RemainingMs(deadline), 200)));
    if (n > 0 && (item.revents & ZMQ_POLLIN)) {
      auto frames = ReceiveMultipart(socket_);
      if (frames.empty()) continue;
      v1::ControlReply reply;
      Status parsed = ParseFrame(frames.back(), kMaxControlMessageBytes, &reply);
      if (!parsed.ok()) {
        MC_LOG(warning) << "broker " << broker_.ToString()
                        << " sent a bad reply: " << parsed.ToString();
        continue;
      }
      if (reply.request_id() != id) continue;  // a late reply to an abandoned request
      if (!reply.ok()) return Status::Rejected(reply.error());
      return reply;
    }
    if (RemainingMs(deadline) == 0) {
      return Status::Timeout("no reply from broker " + broker_.ToString() + " within " +
                             std::to_string(timeout.count()) + " ms");
    }
  }
}

Result<v1::HelloReply> ControlClient::Hello(const std::string& client, Millis timeout) {
  v1::HelloRequest hello;
  hello.set_client(client);
  return Hello(hello, timeout);
}

Result<v1::HelloReply> ControlClient::Hello(const v1::HelloRequest& hello, Millis timeout) {
  v1::ControlRequest request;
  *request.mutable_hello() = hello;
  MC_ASSIGN_OR_RETURN(v1::ControlReply reply, Call(std::move(request), timeout));
  if (!reply.has_hello()) return Status::Rejected("broker answered Hello with something else");
  return std::move(*reply.mutable_hello());
}

Result<v1::EventsReply> ControlClient::Events(const std::string& repo, uint64_t since_serial,
                                              uint32_t max_events, Millis timeout) {
  v1::ControlRequest request;
  auto* events = request.mutable_events();
  events->set_repo(repo);
  events->set_since_serial(since_serial);
  events->set_max_events(max_events);
  MC_ASSIGN_OR_RETURN(v1::ControlReply reply, Call(std::move(request), timeout));
  if (!reply.has_events()) return Status::Rejected("broker answered Events with something else");
  return std::move(*reply.mutable_events());
}

Status ControlClient::SendAck(const v1::Ack& ack, Millis timeout) {
  v1::ControlRequest request;
  *request.mutable_ack()->mutable_ack() = ack;
  auto reply = Call(std::move(request), timeout);
  return reply.status();
}

Result<uint32_t> ControlClient::RelayAcks(const v1::RelayAcksRequest& acks, Millis timeout) {
  v1::ControlRequest request;
  *request.mutable_relay_acks() = acks;
  MC_ASSIGN_OR_RETURN(v1::ControlReply reply, Call(std::move(request), timeout));
  if (!reply.has_relay_acks())
    return Status::Rejected("broker answered RelayAcks with something else");
  return reply.relay_acks().recorded();
}

Result<v1::StatusReply> ControlClient::GetStatus(Millis timeout) {
  v1::ControlRequest request;
  request.mutable_status();
  MC_ASSIGN_OR_RETURN(v1::ControlReply reply, Call(std::move(request), timeout));
  if (!reply.has_status()) return Status::Rejected("broker answered Status with something else");
  return std::move(*reply.mutable_status());
}

Result<uint64_t> ControlClient::PublishKeySet(const std::string& signed_key_set, Millis timeout) {
  v1::ControlRequest request;
  request.mutable_publish_key_set()->set_key_set(signed_key_set);
  MC_ASSIGN_OR_RETURN(v1::ControlReply reply, Call(std::move(request), timeout));
  if (!reply.has_publish_key_set()) {
    return Status::Rejected("broker answered PublishKeySet with something else");
  }
  return reply.publish_key_set().version();
}

}  // namespace mirrorcast
