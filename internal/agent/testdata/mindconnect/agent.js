// Runs the official MindConnect agent SDK, unmodified, against fieldtrust:
// onboard with the boarding configuration, get a token (RenewToken rotates
// the credentials when they expire within 25 hours), put a data-source
// configuration and a data-point mapping, post timeseries (single and
// bulk). Prints what the Go test checks as one JSON line.
//
//   node agent.js BOARDING.json STATE_DIR [RSA_PRIVATE_KEY.pem]
"use strict";
const fs = require("fs");
const { MindConnectAgent } = require("@mindconnect/mindconnect-nodejs");

async function main() {
  const [boardingFile, stateDir, keyFile] = process.argv.slice(2);
  const boarding = JSON.parse(fs.readFileSync(boardingFile, "utf8"));
  const agent = new MindConnectAgent(boarding, undefined, stateDir);
  if (keyFile) {
    agent.SetupAgentCertificate(fs.readFileSync(keyFile));
  }
  const out = { clientId: agent.ClientId() };
  await agent.OnBoard();
  out.registered = { ...agent.GetMindConnectConfiguration().response };
  out.token = await agent.GetAgentToken();
  out.afterToken = { ...agent.GetMindConnectConfiguration().response };

  const configuration = {
    configurationId: "cfg-sdk-1",
    dataSources: [
      {
        name: "EnvironmentData",
        description: "environment of the press",
        dataPoints: [
          { id: "DP-Temperature", name: "Temperature", type: "DOUBLE", unit: "°C" },
          { id: "DP-Pressure", name: "Pressure", type: "DOUBLE", unit: "kPa" },
          { id: "DP-Strokes", name: "Strokes", type: "INT", unit: "" },
          { id: "DP-Open", name: "Open", type: "BOOLEAN", unit: "" },
        ],
      },
    ],
  };
  out.putConfiguration = await agent.PutDataSourceConfiguration(configuration);
  out.configuration = await agent.GetDataSourceConfiguration();
  await agent.PutDataMappings([
    { agentId: agent.ClientId(), dataPointId: "DP-Pressure", entityId: "hydraulic-unit", propertySetName: "hydraulics", propertyName: "pressure" },
  ]);
  out.mappings = await agent.GetDataMappings();

  const t0 = new Date(Date.UTC(2026, 10, 30, 12, 0, 0));
  out.postData = await agent.PostData(
    [
      { dataPointId: "DP-Temperature", qualityCode: "0", value: "21.5" },
      { dataPointId: "DP-Pressure", qualityCode: "0", value: "101.3" },
      { dataPointId: "DP-Strokes", qualityCode: "0", value: "17" },
      { dataPointId: "DP-Open", qualityCode: "0", value: "true" },
    ],
    t0
  );
  out.bulkPostData = await agent.BulkPostData([
    { timestamp: new Date(t0.getTime() + 1000).toISOString(), values: [{ dataPointId: "DP-Temperature", qualityCode: "0", value: "21.7" }] },
    { timestamp: new Date(t0.getTime() + 2000).toISOString(), values: [{ dataPointId: "DP-Temperature", qualityCode: "0", value: "21.9" }, { dataPointId: "DP-Open", qualityCode: "0", value: "false" }] },
  ]);
  out.final = { ...agent.GetMindConnectConfiguration().response };
  process.stdout.write(JSON.stringify(out) + "\n");
}

main().catch((err) => {
  process.stderr.write((err && err.stack) || String(err));
  process.stderr.write("\n");
  process.exit(1);
});
