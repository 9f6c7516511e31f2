#include "server/metrics/metrics_endpoint.h"

#include <cstring>
#include <string>

namespace ftd::server {

int ServeMetrics(mg_connection* conn, ServiceMetrics* metrics, JobMetricsExporter* exporter) {
  const mg_request_info* info = mg_get_request_info(conn);
  const char* verb = info->request_method != nullptr ? info->request_method : "";
  const bool head = std::strcmp(verb, "HEAD") == 0;
  if (!head && std::strcmp(verb, "GET") != 0) {
    static constexpr char kBody[] = "only GET and HEAD are allowed on /metrics\n";
    mg_printf(conn,
              "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET, HEAD\r\nContent-Type: text/plain\r\n"
              "Content-Length: %zu\r\n\r\n%s",
              sizeof(kBody) - 1, kBody);
    return 405;
  }
  // Events the API has already acknowledged are applied before the scrape is rendered.
  if (exporter != nullptr) exporter->Flush();
  const std::string body = metrics->Text();
  mg_printf(conn,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
            "Content-Length: %zu\r\nCache-Control: no-store\r\n\r\n",
            body.size());
  if (!head) mg_write(conn, body.data(), body.size());
  return 200;
}

}  // namespace ftd::server
